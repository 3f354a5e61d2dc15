//! WebSocket frame boundaries.
