//! A simulated API of a third style: an online shop with cookie sessions (`Set-Cookie: sid=…`
//! on login, the session read from the cookie), anonymous browsing, paginated product and
//! order lists, a cart and checkout, account updates, an export of the own orders
//! (`GET /orders/export`, used rarely) and an order-tracking operation that a release adds
//! after the model matured (`GET /orders/{id}/tracking`, 404 before).
//!
//! Like many real shops it checks no ownership of orders (BOLA), honours a `scope=all` export
//! parameter left from an admin tool (mass export), applies every account field and cart price
//! it receives (mass assignment, tampering), accepts checkout items from the body (a legacy
//! client's path around the cart) and validates no format.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::app::{App, AppRequest, AppResponse};
use super::journeys::{AttackKind, Step, Tail};
use super::styles::{self, Addresses, Plan, Sizes};

/// The attack kinds simulated on the shop, in report order.
pub const ATTACKS: [AttackKind; 16] = [
    AttackKind::SkippedSteps,
    AttackKind::ReplayedTransfer,
    AttackKind::TamperedTransfer,
    AttackKind::AccountEnumeration,
    AttackKind::LowAndSlow,
    AttackKind::Scraping,
    AttackKind::CredentialStuffing,
    AttackKind::StuffingCampaign,
    AttackKind::ShadowProbing,
    AttackKind::MassAssignment,
    AttackKind::Injection,
    AttackKind::ForeignIdentity,
    AttackKind::FormatBreak,
    AttackKind::MassExport,
    AttackKind::PathChange,
    AttackKind::PhoneEnumeration,
];

/// What each attack kind is on the shop.
pub fn label(kind: AttackKind) -> &'static str {
    match kind {
        AttackKind::SkippedSteps => "checkout without a cart (skipped steps)",
        AttackKind::ReplayedTransfer => "replayed checkout",
        AttackKind::TamperedTransfer => "tampered cart item (price, quantity)",
        AttackKind::AccountEnumeration => "order enumeration (BOLA)",
        AttackKind::LowAndSlow => "low-and-slow order enumeration",
        AttackKind::Scraping => "catalogue scraping",
        AttackKind::CredentialStuffing => "credential stuffing (one address)",
        AttackKind::StuffingCampaign => "stuffing campaign (1-2 tries per address)",
        AttackKind::ShadowProbing => "shadow endpoint probing",
        AttackKind::MassAssignment => "mass assignment (loyalty points, role)",
        AttackKind::Injection => "injection",
        AttackKind::ForeignIdentity => "one order of another customer (BOLA)",
        AttackKind::FormatBreak => "format-breaking value",
        AttackKind::MassExport => "mass export (every customer's orders)",
        AttackKind::PathChange => "path change after being caught",
        AttackKind::PhoneEnumeration => "product-id guessing",
        other => other.name(),
    }
}

const CATEGORIES: [&str; 8] = [
    "books", "garden", "kitchen", "toys", "audio", "sports", "office", "pets",
];
const PRODUCTS: usize = 400;
/// Products on one page of `GET /products`, orders on one page of `GET /orders`.
pub const PRODUCT_PAGE: usize = 20;
pub const ORDER_PAGE: usize = 10;
const FIRST_ORDER: u64 = 500_000;

fn sku(k: usize) -> String {
    format!("SKU-{}", 10_000 + k * 7)
}

fn category(k: usize) -> &'static str {
    CATEGORIES[k % CATEGORIES.len()]
}

fn price(k: usize) -> f64 {
    (299 + (k * 733) % 9_700) as f64 / 100.0
}

/// One customer of the simulated world.
#[derive(Debug, Clone)]
pub struct Customer {
    pub email: String,
    pub password: String,
    pub name: String,
    pub phone: String,
    /// Orders placed before the app started, oldest first.
    pub orders: Vec<u64>,
}

/// The customers and orders the journeys are drawn from (and the app starts with).
#[derive(Debug, Clone)]
pub struct World {
    pub customers: Vec<Customer>,
}

impl World {
    pub fn generate(count: usize) -> Self {
        let mut next = FIRST_ORDER;
        let customers = (0..count)
            .map(|i| {
                let orders = (0..3 + (i * 7) % 13)
                    .map(|_| {
                        next += 1;
                        next
                    })
                    .collect();
                Customer {
                    email: format!("shopper{i:05}@example.net"),
                    password: styles::password(i),
                    name: format!("Shopper {i}"),
                    phone: format!("+3161{:07}", 1_000_000 + i * 13),
                    orders,
                }
            })
            .collect();
        Self { customers }
    }
}

#[derive(Debug, Clone)]
struct Order {
    id: u64,
    owner: String,
    items: Vec<Value>,
    total: f64,
}

struct Data {
    customers: HashMap<String, (String, Value)>,
    sessions: HashMap<String, String>,
    carts: HashMap<String, Vec<Value>>,
    orders: Vec<Order>,
    order_index: HashMap<u64, usize>,
}

/// The shop app.
pub struct Shop {
    data: Mutex<Data>,
    next_session: AtomicU64,
    next_order: AtomicU64,
    released: AtomicBool,
}

fn error(status: u16, message: &str) -> AppResponse {
    AppResponse::failed(status, json!({ "error": message }))
}

fn product(k: usize) -> Value {
    json!({ "sku": sku(k), "name": format!("{} item {k}", category(k)), "category": category(k), "price": price(k) })
}

impl Shop {
    pub fn new(world: &World) -> Self {
        let mut orders = Vec::new();
        let mut customers = HashMap::new();
        let mut last = FIRST_ORDER;
        for (i, c) in world.customers.iter().enumerate() {
            customers.insert(
                c.email.clone(),
                (
                    c.password.clone(),
                    json!({ "name": c.name, "email": c.email, "phone": c.phone, "loyaltyPoints": i % 500 }),
                ),
            );
            for &id in &c.orders {
                let k = (id as usize) % PRODUCTS;
                orders.push(Order {
                    id,
                    owner: c.email.clone(),
                    items: vec![json!({ "sku": sku(k), "qty": 1 + id % 3, "price": price(k) })],
                    total: price(k) * (1 + id % 3) as f64,
                });
                last = last.max(id);
            }
        }
        let order_index = orders.iter().enumerate().map(|(i, o)| (o.id, i)).collect();
        Self {
            data: Mutex::new(Data {
                customers,
                sessions: HashMap::new(),
                carts: HashMap::new(),
                orders,
                order_index,
            }),
            next_session: AtomicU64::new(0x5eed_0000_0000),
            next_order: AtomicU64::new(last + 1),
            released: AtomicBool::new(false),
        }
    }

    /// An account as stored (to see whether a mass assignment took effect).
    pub fn account(&self, email: &str) -> Option<Value> {
        self.data
            .lock()
            .customers
            .get(email)
            .map(|(_, a)| a.clone())
    }

    /// Orders placed through the app.
    pub fn orders_placed(&self) -> usize {
        let data = self.data.lock();
        data.orders.len() - data.orders.iter().filter(|o| o.id < FIRST_ORDER).count()
    }

    fn session_id(&self) -> String {
        // Session ids look random to a client (a multiplicative hash of a counter).
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

fn order_json(o: &Order) -> Value {
    json!({ "orderId": o.id, "items": o.items, "total": o.total, "status": "delivered" })
}

impl App for Shop {
    fn release(&self) {
        self.released.store(true, Ordering::Relaxed);
    }

    fn handle(&self, request: &AppRequest) -> AppResponse {
        let segments = request.segments();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let body = request.json().unwrap_or(Value::Null);
        let method = &request.method;
        let page = |size: usize| -> (usize, usize) {
            let p: usize = request
                .query_value("page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(1)
                .max(1);
            (p, (p - 1) * size)
        };
        match (method, segments.as_slice()) {
            (&http::Method::POST, ["login"]) => {
                let email = body["email"].as_str().unwrap_or("");
                let password = body["password"].as_str().unwrap_or("");
                let mut data = self.data.lock();
                let Some((_, account)) = data
                    .customers
                    .get(email)
                    .filter(|(p, _)| p == password)
                    .cloned()
                else {
                    return error(401, "invalid email or password");
                };
                let sid = self.session_id();
                data.sessions.insert(sid.clone(), email.to_owned());
                let mut answer = AppResponse::ok(200, json!({ "customer": account }));
                answer.set_cookie = Some(format!("sid={sid}; Path=/; HttpOnly; SameSite=Lax"));
                return answer;
            }
            (&http::Method::GET, ["products"]) => {
                let (p, skip) = page(PRODUCT_PAGE);
                let wanted = request.query_value("category");
                let items: Vec<Value> = (0..PRODUCTS)
                    .filter(|k| wanted.as_deref().is_none_or(|c| category(*k) == c))
                    .skip(skip)
                    .take(PRODUCT_PAGE)
                    .map(product)
                    .collect();
                return AppResponse::ok(200, json!({ "items": items, "page": p }));
            }
            (&http::Method::GET, ["products", id]) => {
                return match (0..PRODUCTS).find(|k| sku(*k) == *id) {
                    Some(k) => AppResponse::ok(200, product(k)),
                    None => error(404, "no such product"),
                };
            }
            _ => {}
        }
        let mut data = self.data.lock();
        let sid = request.cookie("sid").unwrap_or_default();
        let Some(me) = data.sessions.get(&sid).cloned() else {
            return error(401, "login required");
        };
        match (method, segments.as_slice()) {
            (&http::Method::POST, ["logout"]) => {
                data.sessions.remove(&sid);
                data.carts.remove(&sid);
                let mut answer = AppResponse::ok(200, json!({ "ok": true }));
                answer.set_cookie = Some("sid=; Path=/; Max-Age=0".to_owned());
                answer
            }
            (&http::Method::GET, ["cart"]) => {
                let items = data.carts.get(&sid).cloned().unwrap_or_default();
                AppResponse::ok(200, json!({ "items": items }))
            }
            // Applies the quantity and any price it receives (tampering).
            (&http::Method::POST, ["cart", "items"]) => {
                let Some(k) = body["sku"]
                    .as_str()
                    .and_then(|s| (0..PRODUCTS).find(|k| sku(*k) == s))
                else {
                    return error(400, "unknown sku");
                };
                let mut item =
                    json!({ "sku": sku(k), "qty": body["qty"].clone(), "price": price(k) });
                if !body["price"].is_null() {
                    item["price"] = body["price"].clone();
                }
                let cart = data.carts.entry(sid).or_default();
                cart.push(item);
                AppResponse::ok(201, json!({ "items": cart.clone() }))
            }
            // Items from the body are accepted too (a legacy client's path around the cart).
            (&http::Method::POST, ["checkout"]) => {
                let items = match body["items"].as_array() {
                    Some(items) => items.clone(),
                    None => data.carts.remove(&sid).unwrap_or_default(),
                };
                if items.is_empty() {
                    return error(400, "the cart is empty");
                }
                let total = items
                    .iter()
                    .map(|i| i["price"].as_f64().unwrap_or(0.0) * i["qty"].as_f64().unwrap_or(1.0))
                    .sum();
                let id = self.next_order.fetch_add(1, Ordering::Relaxed);
                let index = data.orders.len();
                data.orders.push(Order {
                    id,
                    owner: me,
                    items,
                    total,
                });
                data.order_index.insert(id, index);
                AppResponse::ok(201, json!({ "orderId": id, "total": total }))
            }
            (&http::Method::GET, ["orders"]) => {
                let (p, skip) = page(ORDER_PAGE);
                let items: Vec<Value> = data
                    .orders
                    .iter()
                    .filter(|o| o.owner == me)
                    .skip(skip)
                    .take(ORDER_PAGE)
                    .map(|o| json!({ "orderId": o.id, "total": o.total }))
                    .collect();
                AppResponse::ok(200, json!({ "items": items, "page": p }))
            }
            // `scope=all` is left from an admin tool: every customer's orders.
            (&http::Method::GET, ["orders", "export"]) => {
                let all = request.query_value("scope").as_deref() == Some("all");
                let records: Vec<Value> = data
                    .orders
                    .iter()
                    .filter(|o| all || o.owner == me)
                    .map(|o| json!({ "orderId": o.id, "customer": o.owner, "items": o.items, "total": o.total }))
                    .collect();
                AppResponse::ok(200, json!({ "records": records }))
            }
            // No ownership check (BOLA).
            (&http::Method::GET, ["orders", id]) => {
                match id
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| data.order_index.get(&id))
                {
                    Some(&i) => AppResponse::ok(200, order_json(&data.orders[i])),
                    None => error(404, "no such order"),
                }
            }
            (&http::Method::GET, ["orders", id, "tracking"])
                if self.released.load(Ordering::Relaxed) =>
            {
                match id
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| data.order_index.get(&id))
                {
                    Some(_) => AppResponse::ok(
                        200,
                        json!({ "orderId": id, "carrier": "PostNL", "events": [ { "status": "delivered" } ] }),
                    ),
                    None => error(404, "no such order"),
                }
            }
            (&http::Method::GET, ["account"]) => match data.customers.get(&me) {
                Some((_, a)) => AppResponse::ok(200, a.clone()),
                None => error(404, "no such account"),
            },
            // Applies every field it receives (mass assignment).
            (&http::Method::PUT, ["account"]) => match (body, data.customers.get_mut(&me)) {
                (Value::Object(fields), Some((_, account))) => {
                    for (k, v) in fields {
                        account[k] = v;
                    }
                    AppResponse::ok(200, account.clone())
                }
                _ => error(400, "a JSON object is required"),
            },
            _ => error(404, "not found"),
        }
    }
}

fn login(email: &str, password: &str) -> Step {
    styles::anonymous(
        http::Method::POST,
        "/login",
        Some(json!({ "email": email, "password": password })),
    )
}

fn get(path: impl Into<String>) -> Step {
    styles::step(http::Method::GET, path, None)
}

fn products(page: usize, category: Option<&str>) -> Step {
    let path = match category {
        Some(c) => format!("/products?category={c}&page={page}&size={PRODUCT_PAGE}"),
        None => format!("/products?page={page}&size={PRODUCT_PAGE}"),
    };
    get(path)
}

/// Products a listing shows.
fn listed(page: usize, category: Option<&str>) -> Vec<usize> {
    (0..PRODUCTS)
        .filter(|k| category.is_none_or(|c| self::category(*k) == c))
        .skip((page - 1) * PRODUCT_PAGE)
        .take(PRODUCT_PAGE)
        .collect()
}

fn add_item(k: usize, qty: u64) -> Step {
    styles::step(
        http::Method::POST,
        "/cart/items",
        Some(json!({ "sku": sku(k), "qty": qty })),
    )
}

fn checkout(rng: &mut ChaCha8Rng, c: &Customer) -> Step {
    styles::step(
        http::Method::POST,
        "/checkout",
        Some(json!({
            "shippingAddress": { "name": c.name, "street": format!("Keizersgracht {}", rng.random_range(1..400)), "city": "Amsterdam", "zip": "1015 CJ" },
            "payment": *["card", "paypal", "ideal"].choose(rng).unwrap_or(&"card"),
        })),
    )
}

/// Browsing a listing and a product page (anonymous or in the session).
fn browse(rng: &mut ChaCha8Rng, steps: &mut Vec<Step>, authenticated: bool) -> usize {
    let category = rng
        .random_bool(0.5)
        .then(|| *CATEGORIES.choose(rng).unwrap_or(&"books"));
    let page = if category.is_some() {
        1
    } else {
        styles::page(rng)
    };
    let shown = listed(page, category);
    let k = shown.choose(rng).copied().unwrap_or(0);
    let mut list = products(page, category);
    let mut view = get(format!("/products/{}", sku(k)));
    list.authenticated = authenticated;
    view.authenticated = authenticated;
    steps.push(list);
    steps.push(view);
    k
}

/// One honest session of customer `i`: perhaps anonymous browsing first, a login (4% mistyped
/// first), one to four tasks, sometimes a logout. `rare` adds the export of the own orders;
/// `released` lets order views go on to the tracking a release added.
fn benign(rng: &mut ChaCha8Rng, c: &Customer, rare: bool, released: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    if rng.random_bool(0.5) {
        browse(rng, &mut steps, false);
    }
    if rng.random_bool(0.04) {
        steps.push(login(&c.email, "wrong-password"));
    }
    steps.push(login(&c.email, &c.password));
    let tasks = styles::tasks_per_visit(rng);
    let rare_at = rare.then(|| rng.random_range(0..tasks));
    for t in 0..tasks {
        let mut task = Vec::new();
        if rare_at == Some(t) {
            task.push(get(format!("/orders?page=1&size={ORDER_PAGE}")));
            let mut export = get("/orders/export?format=json");
            export.tail = Tail::Rare;
            task.push(export);
        } else {
            match rng.random_range(0..100) {
                // Buy something.
                0..=39 => {
                    let k = browse(rng, &mut task, true);
                    task.push(add_item(k, rng.random_range(1..=3)));
                    if rng.random_bool(0.4) {
                        let k2 = browse(rng, &mut task, true);
                        task.push(add_item(k2, 1));
                    }
                    task.push(get("/cart"));
                    task.push(checkout(rng, c));
                }
                // Look at past orders.
                40..=69 => {
                    task.push(get(format!("/orders?page=1&size={ORDER_PAGE}")));
                    let shown = &c.orders[..c.orders.len().min(ORDER_PAGE)];
                    for _ in 0..rng.random_range(1..=2) {
                        if let Some(id) = shown.choose(rng) {
                            task.push(get(format!("/orders/{id}")));
                            if released && rng.random_bool(0.3) {
                                let mut tracking = get(format!("/orders/{id}/tracking"));
                                tracking.tail = Tail::Released;
                                task.push(tracking);
                            }
                        }
                    }
                }
                // The account, sometimes an update.
                70..=84 => {
                    task.push(get("/account"));
                    if rng.random_bool(0.4) {
                        let body = match rng.random_range(0..3) {
                            0 => json!({ "name": format!("{} B.", c.name) }),
                            1 => json!({ "phone": c.phone }),
                            _ => {
                                json!({ "email": format!("shopper.{}@mail.example.com", rng.random_range(10..99)) })
                            }
                        };
                        task.push(styles::step(http::Method::PUT, "/account", Some(body)));
                    }
                }
                // Just browse.
                _ => {
                    browse(rng, &mut task, true);
                    if rng.random_bool(0.5) {
                        task.push(get("/cart"));
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
    if rng.random_bool(0.3) {
        steps.push(styles::step(http::Method::POST, "/logout", None));
    }
    steps
}

fn harmful(mut s: Step) -> Step {
    s.harmful = true;
    s
}

fn foreign_orders(rng: &mut ChaCha8Rng, world: &World, me: usize, count: usize) -> Vec<u64> {
    let mut ids: Vec<u64> = world
        .customers
        .iter()
        .enumerate()
        .filter(|(k, _)| *k != me)
        .flat_map(|(_, c)| c.orders.iter().copied())
        .collect();
    let start = rng.random_range(0..ids.len().saturating_sub(count).max(1));
    ids.drain(..start);
    ids.truncate(count);
    ids
}

/// One attack session of `kind` by customer `i`.
fn attack(rng: &mut ChaCha8Rng, world: &World, i: usize, kind: AttackKind) -> Vec<Step> {
    let c = &world.customers[i];
    let mut steps = vec![login(&c.email, &c.password)];
    let k = rng.random_range(0..PRODUCTS);
    match kind {
        AttackKind::SkippedSteps => {
            let mut s = checkout(rng, c);
            if let Some(body) = s.body.as_mut() {
                body["items"] = json!([{ "sku": sku(k), "qty": 3, "price": 0.01 }]);
            }
            steps.push(harmful(s));
        }
        AttackKind::ReplayedTransfer => {
            // An honest-looking purchase (the product it looked at), whose checkout is then
            // sent again: the replay must follow a checkout that succeeded.
            let shown = browse(rng, &mut steps, true);
            steps.push(add_item(shown, 1));
            steps.push(get("/cart"));
            let s = checkout(rng, c);
            for _ in 0..4 {
                steps.push(harmful(s.clone()));
            }
        }
        AttackKind::TamperedTransfer => {
            browse(rng, &mut steps, true);
            let body = match rng.random_range(0..3) {
                0 => json!({ "sku": sku(k), "qty": -5 }),
                1 => json!({ "sku": sku(k), "qty": 1, "price": 0.01 }),
                _ => json!({ "sku": sku(k), "qty": "1 OR 1=1" }),
            };
            steps.push(harmful(styles::step(
                http::Method::POST,
                "/cart/items",
                Some(body),
            )));
            steps.push(get("/cart"));
        }
        AttackKind::AccountEnumeration => {
            steps.push(get(format!("/orders?page=1&size={ORDER_PAGE}")));
            for id in foreign_orders(rng, world, i, 40) {
                steps.push(harmful(get(format!("/orders/{id}"))));
            }
        }
        AttackKind::LowAndSlow => {
            steps.push(get(format!("/orders?page=1&size={ORDER_PAGE}")));
            for (n, id) in foreign_orders(rng, world, i, 16).into_iter().enumerate() {
                let mut s = harmful(get(format!("/orders/{id}")));
                s.think_ms = rng.random_range(20..60);
                steps.push(s);
                if n % 4 == 3 {
                    steps.push(get("/cart"));
                }
            }
        }
        AttackKind::Scraping => {
            for page in 1..=100 {
                let s = products(page, None);
                steps.push(if page > 10 { harmful(s) } else { s });
            }
        }
        AttackKind::CredentialStuffing => {
            steps.clear();
            for victim in world
                .customers
                .iter()
                .skip(rng.random_range(0..100))
                .take(40)
            {
                steps.push(harmful(login(&victim.email, styles::leaked_password(rng))));
            }
        }
        AttackKind::ShadowProbing => {
            steps.push(get("/cart"));
            for path in [
                "/admin",
                "/orders/export/all",
                "/api/v2/orders",
                "/.git/config",
                "/actuator/health",
                "/orders/admin",
                "/internal/metrics",
                "/cart/debug",
            ] {
                steps.push(harmful(get(path)));
            }
        }
        AttackKind::MassAssignment => {
            steps.push(get("/account"));
            let body = match rng.random_range(0..2) {
                0 => json!({ "name": c.name, "loyaltyPoints": 1_000_000 }),
                _ => json!({ "phone": c.phone, "role": "admin" }),
            };
            steps.push(harmful(styles::step(
                http::Method::PUT,
                "/account",
                Some(body),
            )));
        }
        AttackKind::Injection => {
            steps.push(get("/cart"));
            let s = match rng.random_range(0..3) {
                0 => get(format!(
                    "/products?category={}&page=1&size={PRODUCT_PAGE}",
                    styles::encode_path("books' OR '1'='1")
                )),
                1 => get("/products/..%2F..%2Fetc%2Fpasswd"),
                _ => styles::step(
                    http::Method::PUT,
                    "/account",
                    Some(json!({ "name": "<img src=x onerror=alert(document.cookie)>" })),
                ),
            };
            steps.push(harmful(s));
        }
        AttackKind::ForeignIdentity => {
            steps.push(get(format!("/orders?page=1&size={ORDER_PAGE}")));
            if let Some(id) = foreign_orders(rng, world, i, 1).first() {
                steps.push(harmful(get(format!("/orders/{id}"))));
            }
        }
        AttackKind::FormatBreak => {
            steps.push(get("/account"));
            let body = match rng.random_range(0..3) {
                0 => json!({ "email": format!("shopper{i}.example.net") }),
                1 => json!({ "name": "N".repeat(5000) }),
                _ => json!({ "phone": "call me maybe, any time after six" }),
            };
            steps.push(harmful(styles::step(
                http::Method::PUT,
                "/account",
                Some(body),
            )));
        }
        AttackKind::MassExport => {
            steps.push(get(format!("/orders?page=1&size={ORDER_PAGE}")));
            steps.push(harmful(get("/orders/export?format=json&scope=all")));
        }
        AttackKind::PathChange => {
            // Scrapes the catalogue until (perhaps) caught, then enumerates orders.
            for page in 1..=40 {
                let s = products(page, None);
                steps.push(if page > 10 { harmful(s) } else { s });
            }
            for id in foreign_orders(rng, world, i, 15) {
                steps.push(harmful(get(format!("/orders/{id}"))));
            }
        }
        AttackKind::PhoneEnumeration => {
            steps.push(products(1, None));
            for n in 0..40 {
                // Every other guess exists.
                let guess = if n % 2 == 0 {
                    sku(n * 9)
                } else {
                    format!("SKU-{}", 10_001 + n * 7)
                };
                steps.push(harmful(get(format!("/products/{guess}"))));
            }
        }
        _ => {}
    }
    steps
}

/// The shop's journeys: `sizes.learning` honest sessions (two of them export their orders),
/// then the mixed phase after the release: honest sessions of returning and new customers (3%
/// export, order views go on to the released tracking) and `sizes.attacks_per_kind` sessions
/// of every kind in [`ATTACKS`] (each stuffing campaign tries 8 e-mails, 1–2 per address, one
/// session per address), shuffled.
pub fn plan(seed: u64, sizes: &Sizes) -> (World, Plan) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let returning_count = (sizes.benign / 2).min(sizes.learning);
    let new_count = sizes.benign - returning_count;
    let attackers = sizes.attacks_per_kind * ATTACKS.len() + 2;
    let world = World::generate(sizes.learning + new_count + attackers + 120);
    let mut addresses = Addresses::default();
    let mut plan = Plan::default();
    let rare_learning = styles::rare_learning_sessions(sizes.learning);
    for i in 0..sizes.learning {
        let steps = benign(
            &mut rng,
            &world.customers[i],
            rare_learning.contains(&i),
            false,
        );
        plan.learning.push(addresses.benign(steps, &mut rng));
    }
    let mut returning: Vec<usize> = (0..sizes.learning).collect();
    returning.shuffle(&mut rng);
    returning.truncate(returning_count);
    let mut mixed = Vec::new();
    for i in returning {
        let rare = rng.random_bool(styles::RARE_SHARE);
        let steps = benign(&mut rng, &world.customers[i], rare, true);
        let j = addresses.benign(steps, &mut rng);
        plan.returning.insert(j.client);
        mixed.push(j);
    }
    for k in 0..new_count {
        let rare = rng.random_bool(styles::RARE_SHARE);
        let steps = benign(&mut rng, &world.customers[sizes.learning + k], rare, true);
        mixed.push(addresses.benign(steps, &mut rng));
    }
    let mut attacker = sizes.learning + new_count;
    for kind in ATTACKS {
        for _ in 0..sizes.attacks_per_kind {
            if kind == AttackKind::StuffingCampaign {
                let start = rng.random_range(0..world.customers.len().saturating_sub(8));
                let emails: Vec<String> = world
                    .customers
                    .iter()
                    .skip(start)
                    .take(8)
                    .map(|c| c.email.clone())
                    .collect();
                mixed.extend(addresses.campaign(&emails, &mut rng, |email, rng| {
                    harmful(login(email, styles::leaked_password(rng)))
                }));
                continue;
            }
            let steps = attack(&mut rng, &world, attacker, kind);
            attacker += 1;
            mixed.push(addresses.attack(kind, steps, &mut rng));
        }
    }
    mixed.shuffle(&mut rng);
    plan.mixed = mixed;
    (world, plan)
}

/// The enforcer config of the shop's evaluation: sessions keyed by the `sid` cookie, then the
/// client address; every learned detector blocks.
pub fn enforcer_yaml(upstream: std::net::SocketAddr, mode: &str) -> String {
    styles::enforcer_yaml(
        upstream,
        mode,
        "  identifiers:\n    - cookie: { name: sid }\n    - clientIp: {}",
    )
}
