//! Holding requests: WebSocket tunnels across a pause, the bounds of holding, the drain deadline, and the admin API's security.
