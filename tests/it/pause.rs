//! Backend deploys under load: pause, kill, restart, resume (real backend processes).
