# Sourced by bench/run.sh and bench/instructions.sh: lameduck's benchmark configuration.
# BACKEND must be set to the bench backend's address.

# lameduck_config ADDR: prints the config of a one-worker lameduck listening on ADDR
lameduck_config() {
    cat <<EOF
workers = 1

[[listen]]
addr = "$1"

[upstream.backend]
addrs = ["$BACKEND"]

[[route]]
upstream = "backend"

[drain]
deadline = "10s"
close_timeout = "5s"

[limits]
max_connections = 9000
EOF
}
