// A page of one origin calling the API of another (gRPC-Web + CORS), in headless Chromium:
// ALLOWED_PAGE (its server is on the API's --cors-origin list) signs in and searches; REFUSED_PAGE
// (whose API server lists no origins) is refused by the browser. Run by
// services/econsult/tests/browser.rs. Environment: ALLOWED_PAGE, REFUSED_PAGE, NIN.
import { chromium } from "playwright-core";

const { ALLOWED_PAGE, REFUSED_PAGE, NIN } = process.env;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const signIn = async (url) => {
    const page = await (await browser.newContext()).newPage();
    page.setDefaultTimeout(15_000);
    await page.goto(url);
    await page.getByLabel("Fødselsnummer (syntetisk)").fill(NIN);
    await page.getByRole("button", { name: "Logg inn" }).click();
    await page.locator("#status").filter({ hasText: /Logget inn|Feil/ }).waitFor();
    return page;
  };
  const allowed = await signIn(ALLOWED_PAGE);
  await allowed.getByText("Logget inn.").waitFor();
  await allowed.getByRole("button", { name: "Søk" }).click();
  await allowed.locator("#status").filter({ hasText: /ledige timer|Ingen ledige/ }).waitFor();
  console.log(`allowed origin: ${await allowed.locator("#status").textContent()}`);
  const refused = await signIn(REFUSED_PAGE);
  const status = await refused.locator("#status").textContent();
  if (!status.startsWith("Feil")) throw new Error(`the other origin was not refused: ${status}`);
  console.log(`other origin: ${status}`);
  console.log("OK");
} finally {
  await browser.close();
}
