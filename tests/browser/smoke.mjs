// Smoke check of the harness: opens the URL given as argv[2] and prints the page title.
import { launch } from "./launch.mjs";
const browser = await launch();
try {
  const page = await browser.newPage();
  await page.goto(process.argv[2]);
  console.log(await page.title());
} finally {
  await browser.close();
}
