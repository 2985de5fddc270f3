// Starts Debian's Chromium headless through playwright-core, with the flags this machine's closed
// network needs (no background networking, no component updates, a fresh profile: playwright makes a temporary one).
// Shared by every browser test script in this folder; each script is run by a Rust test in
// tests/it with the host's URL in its environment.
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

export async function launch() {
  const args = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ];
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args });
}
