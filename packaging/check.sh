#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and inspects it: the binary, the units (ExecStart=
# on /usr/bin), the man page, the completions and the example config are where Debian expects
# them, and lintian has no error (when lintian is installed). Slow the first time: it compiles
# cargo-deb (about 4 min on 2 cores) and a release build of lameduck (about 2 min). Not part of
# .ci/run for that reason.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac

command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
cargo build --release --locked

assets=$target/release/deb-assets
rm -rf "$assets" && mkdir -p "$assets"
for unit in lameduck.service lameduck.socket; do
    sed 's|/usr/local/bin/lameduck|/usr/bin/lameduck|g' "systemd/$unit" > "$assets/$unit"
done
"$target/release/lameduck" generate man | gzip -9n > "$assets/lameduck.8.gz"
"$target/release/lameduck" generate completions bash > "$assets/lameduck.bash"
"$target/release/lameduck" generate completions zsh > "$assets/_lameduck"
"$target/release/lameduck" generate completions fish > "$assets/lameduck.fish"

deb=$(cargo deb --no-build --locked | tail -1)
echo "built $deb"
contents=$(dpkg-deb -c "$deb")
echo "$contents"
for path in ./usr/bin/lameduck ./lib/systemd/system/lameduck.service ./lib/systemd/system/lameduck.socket \
    ./usr/share/man/man8/lameduck.8.gz ./usr/share/bash-completion/completions/lameduck \
    ./usr/share/zsh/vendor-completions/_lameduck ./usr/share/fish/vendor_completions.d/lameduck.fish \
    ./usr/share/doc/lameduck/examples/proxy.toml ./usr/share/doc/lameduck/copyright; do
    grep -q " $path\$" <<<"$contents" || { echo "missing from the package: $path" >&2; exit 1; }
done
unpacked=$(mktemp -d)
dpkg-deb -x "$deb" "$unpacked"
grep -q '^ExecStart=/usr/bin/lameduck ' "$unpacked/lib/systemd/system/lameduck.service" \
    || { echo "the packaged unit does not run /usr/bin/lameduck" >&2; exit 1; }
"$unpacked/usr/bin/lameduck" --check --config "$unpacked/usr/share/doc/lameduck/examples/proxy.toml"
rm -rf "$unpacked"
if command -v lintian >/dev/null; then
    lintian --fail-on error "$deb"
else
    echo "lintian not installed; skipped"
fi
echo "packaging/check.sh: ok"
