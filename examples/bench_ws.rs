//! WebSocket clients for `bench/run.sh`: opens N tunnels through a proxy, holds them idle, and
//! reports when every one of them has received a Close frame.
//!
//! ```text
//! cargo run --release --example bench_ws -- ws://127.0.0.1:8080/ws 5000
//! ```
//! Prints `open N` once all tunnels are up, then, as Close frames arrive,
//! `closed N last_close_unix=SECONDS` when all N have one, or `ended closes=K of N` if some
//! tunnels ended without a Close frame (cut).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let closes = Arc::new(AtomicUsize::new(0));
        let opened = Arc::new(Semaphore::new(0));
        let connecting = Arc::new(Semaphore::new(200));
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let (url, closes, opened, connecting) =
                (url.clone(), closes.clone(), opened.clone(), connecting.clone());
            tasks.push(tokio::spawn(async move {
                let permit = connecting.acquire_owned().await.expect("open");
                let mut ws = loop {
                    match tokio_tungstenite::connect_async(url.as_str()).await {
                        Ok((ws, _)) => break ws,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                };
                drop(permit);
                opened.add_permits(1);
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Close(_) = msg {
                        let done = closes.fetch_add(1, Ordering::SeqCst) + 1;
                        if done == n {
                            println!("closed {n} last_close_unix={:.6}", unix_now());
                        }
                    }
                }
            }));
        }
        let _ = opened.acquire_many(n as u32).await.expect("open");
        println!("open {n}");
        for task in tasks {
            let _ = task.await;
        }
        let got = closes.load(Ordering::SeqCst);
        if got < n {
            println!("ended closes={got} of {n} at_unix={:.6}", unix_now());
        }
    });
}
