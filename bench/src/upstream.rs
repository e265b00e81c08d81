//! The fast upstream every target forwards to: a hyper HTTP/1.1 server with keep-alive that
//! drains the request body and answers every request with the same realistic ~1 KB JSON
//! document (an account with recent transactions), prepared once.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The response body: about 1 KB of JSON shaped like a banking API's account view.
pub fn response_body() -> Bytes {
    let mut transactions = Vec::new();
    for i in 0..5u32 {
        transactions.push(serde_json::json!({
            "id": format!("{}", 900_000_100 + i),
            "bookedAt": format!("2026-11-{:02}T09:{:02}:00Z", 10 + i, 10 + 7 * i),
            "amount": { "value": format!("-{}.{:02}", 12 + i * 7, (i * 13) % 100), "currency": "EUR" },
            "counterparty": "ACME Groceries Ltd",
            "category": "groceries"
        }));
    }
    let doc = serde_json::json!({
        "accountId": "40000042",
        "iban": "GB33BUKB20201555555555",
        "name": "Everyday current account",
        "status": "active",
        "balance": { "available": "1520.33", "booked": "1498.10", "currency": "EUR" },
        "overdraftLimit": "500.00",
        "owner": { "customerId": "cust-0000042", "displayName": "A. Customer" },
        "transactions": transactions,
        "links": { "self": "/api/v1/accounts/40000042", "transactions": "/api/v1/accounts/40000042/transactions?page=1" }
    });
    Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
}

/// Serves forever on `listener`; one task per connection.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let body = response_body();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let body = body.clone();
                async move {
                    // Drain the request body so the connection can be reused.
                    let _ = req.into_body().collect().await;
                    let response = Response::builder()
                        .header("content-type", "application/json")
                        .header("cache-control", "no-store")
                        .body(Full::new(body))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds `addr` and serves (for the `upstream` subcommand and for tests).
pub async fn bind_and_serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    serve(listener).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_about_one_kilobyte_of_json() {
        let body = response_body();
        assert!((800..=1400).contains(&body.len()), "{}", body.len());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["transactions"].as_array().unwrap().len(), 5);
    }
}
