// The web console in headless Chromium, run by tests/it/console.rs::console_in_headless_chromium
// after it created an authorized install (FakeOAuth) and seeded patients. Signs in with the API
// key, checks the session cookie's flags, sees the connector and its setup, the authorized
// install, runs get_patient from the generated form and sees the patient's name, sees the audit
// trail, and submits a cross-site form (from a page on another origin) that must be refused.
// Screenshots of each page go to $SHOTS/console-<page>.png; the installs page also to $DOC_SHOT.
import http from "node:http";
import { launch } from "./launch.mjs";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const BASE = env("CONSOLE_BASE");
const API_KEY = env("API_KEY");
const ACCOUNT = env("ACCOUNT");
const INSTALL = env("INSTALL");
const CONNECTOR = env("CONNECTOR");
const PATIENT_ID = env("PATIENT_ID");
const PATIENT_FAMILY = env("PATIENT_FAMILY");
const SHOTS = env("SHOTS");
const DOC_SHOT = process.env.DOC_SHOT;

function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
  console.log(`ok - ${message}`);
}

// A page on another origin (same host, another port: same site, so the SameSite cookie IS sent;
// only the server's CSRF rule can refuse it) with a form that posts to the console's API.
function startEvilSite() {
  const page = `<!doctype html><html lang="en"><head><title>Elsewhere</title></head><body>
<h1>Win a prize</h1>
<form id="evil" method="post" action="${BASE}/v1/accounts" enctype="text/plain">
<input type="hidden" name='{"id":"evil","x":"' value='"}'>
<button id="go" type="submit">Claim</button></form></body></html>`;
  const server = http.createServer((_, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(page);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

const browser = await launch();
const evil = await startEvilSite();
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const shot = async (name) => {
    await page.screenshot({ path: `${SHOTS}/console-${name}.png`, fullPage: true });
  };

  // Sign in: a wrong key first (a clear error, no session), then the right one.
  await page.goto(`${BASE}/console`);
  await page.getByLabel("Tenant API key").waitFor();
  check((await page.getAttribute("html", "lang")) === "en", "the page declares its language");
  check(await page.locator("#nav").isHidden(), "no navigation before sign-in");
  check(await page.getByLabel("Tenant API key").evaluate((el) => el === document.activeElement), "the key field has the focus");
  await page.getByLabel("Tenant API key").fill(`${API_KEY}-wrong`);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#signin-error", { hasText: "not valid" }).waitFor();
  check((await context.cookies()).every((c) => c.name !== "sb_console"), "a wrong key opens no session");
  await shot("signin");
  await page.getByLabel("Tenant API key").fill(API_KEY);
  await page.keyboard.press("Enter"); // keyboard only
  await page.getByRole("navigation", { name: "Console sections" }).waitFor();

  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "sb_console");
  const csrf = cookies.find((c) => c.name === "sb_console_csrf");
  check(session && session.httpOnly, "the session cookie is HttpOnly");
  check(session.sameSite === "Strict" && session.path === "/", "the session cookie is SameSite=Strict, Path=/");
  check(!session.secure, "no Secure flag on an http public URL");
  check(csrf && !csrf.httpOnly, "the CSRF cookie is readable by the page");
  check(await page.evaluate(() => !document.cookie.includes("sb_console=")), "the page's script cannot read the session cookie");

  // Connectors and setups.
  await page.getByRole("heading", { name: /Medplum/ }).first().waitFor();
  const medplum = page.locator("section.card", { has: page.getByRole("heading", { name: /Medplum/ }) }).first();
  const setupText = await medplum.innerText();
  check(setupText.includes("Setup") && setupText.includes("secret (set, hidden)"), `the Medplum setup is shown with its secret masked: ${setupText}`);
  check(!setupText.includes("app-secret"), "the client secret is not on the page");
  await shot("connectors");

  // Accounts.
  await page.getByRole("link", { name: "Accounts" }).click();
  await page.getByRole("cell", { name: ACCOUNT, exact: true }).waitFor();
  await shot("accounts");

  // Installs with their health.
  await page.getByRole("link", { name: "Installs" }).click();
  const row = page.getByRole("row", { name: new RegExp(INSTALL) });
  await row.waitFor();
  const rowText = await row.innerText();
  check(rowText.includes("authorized") && rowText.includes(CONNECTOR), "the install is shown authorized");
  check(!rowText.includes("Invalid Date"), "health times are readable");
  await shot("installs");
  if (DOC_SHOT) await page.screenshot({ path: DOC_SHOT });

  // Run get_patient from the form generated from its parameter schema.
  await row.getByRole("link", { name: "Run a method" }).click();
  await page.getByLabel("Method").waitFor();
  check((await page.getByLabel("Method").inputValue()) === "get_patient", "get_patient is offered first");
  await page.getByLabel("id (required)").fill(PATIENT_ID);
  await page.getByRole("button", { name: "Run" }).click();
  await page.locator("#run-summary").waitFor();
  const summary = await page.locator("#run-summary").innerText();
  check(summary.includes(PATIENT_FAMILY), `the patient's name (${PATIENT_FAMILY}) is shown`);
  check((await page.locator("#run-json").innerText()).includes(`"id": "${PATIENT_ID}"`), "the result JSON is shown");
  await shot("run");

  // A write refused by validation shows the problem, not a crash.
  await page.getByLabel("id (required)").fill("not a valid id!");
  await page.getByRole("button", { name: "Run" }).click();
  await page.locator("#run-result .error").waitFor();
  check((await page.locator("#run-result").innerText()).includes("invalid_params"), "a 422 is shown with its code");

  // The audit trail shows the call.
  await page.getByRole("link", { name: "Audit trail" }).click();
  await page.getByRole("cell", { name: "get_patient", exact: true }).first().waitFor();
  await page.getByLabel("Method").fill("get_patient");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForURL(/method=get_patient/);
  await page.getByRole("cell", { name: "get_patient", exact: true }).first().waitFor();
  await shot("audit");

  // Cross-site: a page on another origin posts a form to the API with the cookie attached.
  const other = await context.newPage();
  await other.goto(`http://127.0.0.1:${evil.address().port}/`);
  const [response] = await Promise.all([
    other.waitForNavigation(),
    other.click("#go"),
  ]);
  check(response.status() === 403, `the cross-site POST is refused (${response.status()})`);
  check((await other.content()).includes("csrf_rejected"), "with code csrf_rejected");
  await other.screenshot({ path: `${SHOTS}/console-cross-site.png` });

  // A fetch from the console without the CSRF header is refused too.
  const bare = await page.evaluate(async () => {
    const r = await fetch("/v1/accounts", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ id: "no-token", name: "No token" }) });
    return r.status;
  });
  check(bare === 403, "a same-origin write without X-CSRF-Token is refused");

  // Sign out: the session is gone, the sign-in page is back.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Tenant API key").waitFor();
  const after = await page.evaluate(async () => (await fetch("/v1/tenant")).status);
  check(after === 401, "after sign-out the API refuses the browser");

  check(errors.length === 0, `no script errors (${errors.join(" | ")})`);
  console.log("console: all checks passed");
} finally {
  evil.close();
  await browser.close();
}
