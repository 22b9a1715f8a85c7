//! Serves the portal alone, for working on the page before or without a full `hds up`:
//! `cargo run -p hds-portal --example serve -- 127.0.0.1:8480`. It serves only `/portal/`;
//! the browser test can take the page from it (`HDS_PORTAL_ORIGIN=http://127.0.0.1:8480`)
//! while the token service and control plane come from a real `hds up`.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8480".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("portal on http://{}/portal/", listener.local_addr()?);
    axum::serve(listener, hds_portal::router()).await
}
