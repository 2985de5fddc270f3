// The hosted connect page in headless Chromium, as a clinic's EHR admin uses it: open the link,
// submit a setting the server refuses (the form comes back with the error beside the field),
// correct it, choose Connect, pass the EHR's authorize step (the local FakeOAuth consents at
// once) and the shared callback, and land on the tenant's return URL; then open the link again
// (already used). Saves a screenshot of each page under SCREENSHOT_DIR.
//
// Environment (set by tests/it/connect.rs): CONNECT_URL (the session's link), ENDPOINT (a
// valid value for the install setting), FIELD (its form field name), RETURN_PREFIX (the
// session's return URL prefix: the tenant's application, a stub page the Rust test serves),
// SCREENSHOT_DIR. Prints one JSON line: {"final_url", "pages": [{name, status, title}]}.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { launch } from "./launch.mjs";

const need = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const connectUrl = need("CONNECT_URL");
const endpoint = need("ENDPOINT");
const field = need("FIELD");
const returnPrefix = need("RETURN_PREFIX");
const shots = need("SCREENSHOT_DIR");
mkdirSync(shots, { recursive: true });

const fail = (msg) => {
  throw new Error(msg);
};
const pages = [];
const browser = await launch();
try {
  const context = await browser.newContext({ viewport: { width: 900, height: 900 } });
  const page = await context.newPage();
  const record = async (name, response) => {
    const entry = { name, status: response ? response.status() : null, title: await page.title() };
    pages.push(entry);
    await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
    return entry;
  };

  // 1. The form.
  let res = await page.goto(connectUrl);
  let seen = await record("connect-01-form", res);
  if (seen.status !== 200) fail(`form page answered ${seen.status}`);
  const input = page.locator(`#f-${field}`);
  // The input is labelled (a screen reader announces the label).
  const labelled = await page.locator(`label[for="f-${field}"]`).count();
  if (labelled !== 1) fail("the setting input has no label");
  if ((await page.locator("html").getAttribute("lang")) !== "en") fail("no lang attribute");
  // Keyboard: the first Tab stop after the page loads is a control of the form.
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.tagName);
  if (!["INPUT", "SELECT", "BUTTON", "A"].includes(focused)) fail(`Tab focused ${focused}`);

  // 2. A URL the browser accepts but Switchboard refuses (not http(s)): the form comes back.
  await input.fill("ftp://clinic.example/fhir/");
  [res] = await Promise.all([
    page.waitForNavigation(),
    page.getByRole("button", { name: "Connect" }).click(),
  ]);
  seen = await record("connect-02-invalid-setting", res);
  if (seen.status !== 422) fail(`invalid setting answered ${seen.status}`);
  if ((await page.locator(`#f-${field}[aria-invalid="true"]`).count()) !== 1) {
    fail("the refused field is not marked invalid");
  }
  if ((await page.locator(`#f-${field}-error`).count()) !== 1) fail("no inline error");

  // 3. The right value: Connect -> EHR authorize -> callback -> the tenant's return URL.
  await input.fill(endpoint);
  await Promise.all([
    page.waitForURL(`${returnPrefix}**`),
    page.getByRole("button", { name: "Connect" }).click(),
  ]);
  await page.evaluate(() => {
    document.getElementById("where").textContent = location.search;
  });
  seen = await record("connect-03-returned", null);
  const finalUrl = page.url();

  // 4. The link again: used.
  res = await page.goto(connectUrl);
  seen = await record("connect-04-link-used", res);
  if (seen.status !== 410) fail(`a used link answered ${seen.status}`);

  console.log(JSON.stringify({ final_url: finalUrl, pages }));
} finally {
  await browser.close();
}
