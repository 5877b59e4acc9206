#!/usr/bin/env bash
# Installs the real peers the test suite talks to, when they are missing:
# Dovecot (IMAP + POP3) as the upstream, and the real clients (curl, openssl,
# python3 for imaplib/poplib, fetchmail, the sqlite3 shell as an outside
# reader of the store), fail2ban, whose fail2ban-regex checks the shipped
# filter, and Debian's chromium, the real browser of the self-service page's
# tests (playwright-core drives it; nothing is downloaded), and systemd's
# systemd-analyze, which checks the shipped unit. Debian/Ubuntu only; safe to
# re-run.
set -euo pipefail

need=()
command -v dovecot >/dev/null 2>&1 || need+=(dovecot-imapd dovecot-pop3d)
[ -e /usr/lib/dovecot/imap ] || need+=(dovecot-imapd)
[ -e /usr/lib/dovecot/pop3 ] || need+=(dovecot-pop3d)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v fetchmail >/dev/null 2>&1 || need+=(fetchmail)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v fail2ban-regex >/dev/null 2>&1 || need+=(fail2ban)
[ -x "${MAILGATE_CHROMIUM:-/usr/bin/chromium}" ] || need+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v make >/dev/null 2>&1 || need+=(make)
command -v g++ >/dev/null 2>&1 || need+=(g++)

if [ ${#need[@]} -eq 0 ]; then
  echo "install-test-deps: everything is installed"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-test-deps: need root or sudo to install: ${need[*]}" >&2; exit 1; }
  sudo="sudo"
fi

# Sorted and de-duplicated, so the log shows exactly what was missing.
mapfile -t pkgs < <(printf '%s\n' "${need[@]}" | sort -u)
echo "install-test-deps: installing ${pkgs[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# The packages' own services are not needed (the tests start Dovecot
# themselves on other ports, and only run fail2ban-regex), but apt may start
# them; that is harmless (Debian's fail2ban watches only sshd by default).
$sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
