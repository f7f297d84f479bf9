#!/usr/bin/env bash
# Builds kiroku_<version>_amd64.deb with dpkg-deb: the binary, the systemd
# unit, the kiroku system user (sysusers), /var/lib/kiroku (tmpfiles),
# /etc/kiroku/kiroku.toml as a conffile (placeholder credentials that
# kiroku refuses until replaced), and the Grafana dashboard and alert rules
# under /usr/share/kiroku/.
#
#   packaging/deb/build.sh                      # cargo build --release, then package
#   packaging/deb/build.sh --binary PATH        # package an existing binary
#   packaging/deb/build.sh --out DIR            # where the .deb goes (default: target/deb)
#
# The release binary is built for the baseline x86-64 CPU (no
# -C target-cpu=native anywhere in the build), so it runs on any amd64 box.
set -euo pipefail
cd "$(dirname "$0")/../.."
binary="" out="target/deb"
while (($#)); do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--binary PATH] [--out DIR]" >&2; exit 2 ;;
  esac
done
if [[ -z "$binary" ]]; then
  cargo build --release --locked -p kiroku
  binary="target/release/kiroku"
fi
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
[[ -n "$version" ]] || { echo "no version in Cargo.toml ([workspace.package])" >&2; exit 1; }
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/kiroku_${version}_amd64"

install -D -m 0755 "$binary" "$root/usr/bin/kiroku"
# Debug sections go: the package carries the program only.
strip --strip-unneeded "$root/usr/bin/kiroku"
install -D -m 0644 packaging/kiroku.service "$root/lib/systemd/system/kiroku.service"
install -D -m 0644 packaging/deb/kiroku.sysusers "$root/usr/lib/sysusers.d/kiroku.conf"
install -D -m 0644 packaging/deb/kiroku.tmpfiles "$root/usr/lib/tmpfiles.d/kiroku.conf"
install -D -m 0644 packaging/deb/kiroku.sysctl "$root/usr/lib/sysctl.d/60-kiroku.conf"
install -D -m 0644 packaging/kiroku.toml "$root/etc/kiroku/kiroku.toml"  # 0640 root:kiroku once the user exists (postinst)
for f in grafana/kiroku.json prometheus/kiroku-alerts.yml; do
  install -D -m 0644 "packaging/$f" "$root/usr/share/kiroku/$f"
done
# The man page: `kiroku --help` and every subcommand's own help.
if command -v help2man >/dev/null; then
  sections="$stage/subcommands.h2m"
  {
    echo "[COMMANDS]"
    for cmd in $("$root/usr/bin/kiroku" --help | sed -n '/^Commands:/,/^$/s/^  \([a-z-]*\) .*/\1/p' | grep -v '^help$'); do
      printf '.SS "kiroku %s"\n.nf\n' "$cmd"
      "$root/usr/bin/kiroku" "$cmd" --help | sed 's/\\/\\e/g; s/^\./\\\&./'
      printf '.fi\n'
    done
    echo "[SEE ALSO]"
    echo "/usr/share/doc/kiroku/README.md and /usr/share/doc/kiroku/docs/ (configuration, operations, security)."
  } > "$sections"
  mkdir -p "$root/usr/share/man/man1"
  help2man --no-info --name "on-premises recording appliance with a TRTC-compatible API" \
    --include "$sections" --version-string "$version" "$root/usr/bin/kiroku" \
    | gzip -9n > "$root/usr/share/man/man1/kiroku.1.gz"
else
  echo "help2man not found: the package has no man page (kiroku --help documents every subcommand)" >&2
fi
doc="$root/usr/share/doc/kiroku"
install -D -m 0644 README.md "$doc/README.md"
for f in docs/*.md; do install -D -m 0644 "$f" "$doc/$f"; done
cat > "$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: kiroku
Source: https://github.com/kiroku/kiroku

Files: *
Copyright: 2026 the kiroku developers
License: Apache-2.0
 The binary statically links Rust crates under MIT, Apache-2.0, BSD, ISC and
 Zlib terms, Cisco's OpenH264 (BSD-2-Clause) and libopus (BSD-3-Clause).
 On Debian systems the full Apache-2.0 text is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
printf 'kiroku (%s) stable; urgency=medium\n\n  * Release %s.\n\n -- kiroku developers <maintainers@kiroku-appliance.org>  %s\n' \
  "$version" "$version" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" \
  | gzip -9n > "$doc/changelog.gz"

mkdir -p "$root/DEBIAN"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
echo /etc/kiroku/kiroku.toml > "$root/DEBIAN/conffiles"
installed_kb="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat > "$root/DEBIAN/control" <<CONTROL
Package: kiroku
Version: $version
Architecture: amd64
Maintainer: kiroku developers <maintainers@kiroku-appliance.org>
Installed-Size: $installed_kb
Depends: libc6 (>= 2.34), libgcc-s1, libstdc++6, systemd
Recommends: libvulkan1, mesa-vulkan-drivers
Section: video
Priority: optional
Homepage: https://github.com/kiroku/kiroku
Description: on-premises recording appliance with a TRTC-compatible API
 kiroku records real-time audio/video rooms: publishers send WebRTC (WHIP)
 into the box, and a REST API wire-compatible with Tencent Cloud TRTC's
 cloud recording starts tasks that record each user or composite them to
 HLS/MP4 on local disk, S3-compatible storage or a built-in VOD store, with
 signed callbacks, Prometheus metrics and systemd supervision.
CONTROL
mkdir -p "$out"
# Root-owned files whoever builds (no fakeroot needed).
dpkg-deb --root-owner-group -Zxz --build "$root" "$out/kiroku_${version}_amd64.deb" >/dev/null
echo "$out/kiroku_${version}_amd64.deb"
