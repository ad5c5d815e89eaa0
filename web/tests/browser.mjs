// Drives the web client in headless Chromium (Debian's, via playwright-core) against a running
// econsult: the patient books a video slot, both sides join, the GP admits, both pages decode
// video frames, the patient's network drops for 3 s mid-call and signalling resumes without a
// lost or duplicated event, the GP ends the consultation as held; then a message goes live from
// patient to practice and back. Run by services/econsult/tests/browser.rs, which checks the
// server's side. Environment: BASE, NIN, HPR, ORG, SHOTS (screenshot folder).
import { chromium } from "playwright-core";

const { BASE, NIN, HPR, ORG, SHOTS } = process.env;
const step = (s) => console.log(`step: ${s}`);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
  ], // playwright gives every launch a fresh, empty --user-data-dir of its own

});
const timeout = 20_000;
try {
  const patientCtx = await browser.newContext({ viewport: { width: 1000, height: 900 } });
  const gpCtx = await browser.newContext({ viewport: { width: 1000, height: 900 } });
  const patient = await patientCtx.newPage();
  const gp = await gpCtx.newPage();
  for (const p of [patient, gp]) p.setDefaultTimeout(timeout);

  step("patient signs in and books a video slot");
  await patient.goto(`${BASE}/#pasient`);
  await patient.getByLabel("Fødselsnummer (syntetisk)").fill(NIN);
  await patient.getByRole("button", { name: "Logg inn" }).click();
  await patient.getByText("Logget inn.").waitFor();
  await patient.getByLabel("Type time").selectOption({ label: "Video" });
  await patient.getByRole("button", { name: "Søk" }).click();
  const book = patient.getByRole("button", { name: "Bestill" }).first();
  await book.waitFor();
  await patient.screenshot({ path: `${SHOTS}/patient-booking.png`, fullPage: true });
  await book.click();
  const join = patient.getByRole("button", { name: "Bli med på video" });
  await join.waitFor();
  const appointmentId = await join.getAttribute("data-appointment");
  console.log(`appointment: ${appointmentId}`);

  step("GP signs in and opens the video room; the patient joins and waits");
  await gp.goto(`${BASE}/#legekontor`);
  await gp.getByLabel("HPR-nummer").fill(HPR);
  await gp.getByLabel("Organisasjonsnummer").fill(ORG);
  await gp.getByRole("button", { name: "Logg inn" }).click();
  await gp.getByText("Logget inn.").waitFor();
  await join.click();
  await patient.getByText("Du er på venterommet").waitFor();
  await gp.getByLabel("Time-ID").fill(appointmentId);
  await gp.getByRole("button", { name: "Åpne videorommet" }).click();
  await gp.getByText("Pasienten venter").waitFor();
  await gp.getByRole("button", { name: "Slipp inn pasienten" }).click();

  const framesDecoded = (page) => page.evaluate(async () => {
    const pc = window.econsultPc;
    if (!pc) return 0;
    let n = 0;
    (await pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") n += r.framesDecoded ?? 0;
    });
    return n;
  });
  const decodes = async (page, within) => {
    const until = Date.now() + within;
    while (Date.now() < until) {
      if ((await framesDecoded(page)) > 0) return true;
      await page.waitForTimeout(200);
    }
    return false;
  };
  step("both pages decode video within 10 s");
  const t0 = Date.now();
  const [p, g] = await Promise.all([decodes(patient, 10_000), decodes(gp, 10_000)]);
  if (!p || !g) throw new Error(`framesDecoded > 0 within 10 s: patient ${p}, GP ${g}`);
  console.log(`frames decoded on both pages after ${Date.now() - t0} ms`);
  await patient.screenshot({ path: `${SHOTS}/call-connected.png`, fullPage: true });

  step("the patient's network drops for 3 s mid-call");
  const cdp = await patientCtx.newCDPSession(patient);
  await cdp.send("Network.enable");
  const seqsBefore = await patient.evaluate(() => [...(window.econsultSeqs ?? [])]);
  await cdp.send("Network.emulateNetworkConditions",
    { offline: true, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  await patient.waitForTimeout(3000);
  await cdp.send("Network.emulateNetworkConditions",
    { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  // Signalling resumed on a new events stream.
  await patient.waitForFunction(() => window.econsultWelcomes >= 2, null, { timeout: 10_000 });
  await patient.getByText("Tilkoblet igjen.").waitFor();
  console.log(`patient events streams: ${await patient.evaluate(() => window.econsultStreams)}`);

  step("the GP ends the consultation as held");
  await gp.getByRole("button", { name: "Avslutt som gjennomført" }).click();
  await patient.getByText("Konsultasjonen er avsluttet.").waitFor();
  const seqs = (await patient.evaluate(() => window.econsultSeqs ?? [])).map(Number);
  for (let i = 1; i < seqs.length; i++) {
    if (seqs[i] !== seqs[i - 1] + 1) throw new Error(`events lost or repeated: ${seqs.join(",")}`);
  }
  if (seqs.length <= seqsBefore.length) throw new Error(`no events after the blip: ${seqs.join(",")}`);
  console.log(`patient events: ${seqs.join(",")}`);

  step("a message goes live from the patient to the practice and back");
  await patient.getByLabel("Emne").fill("Hoste");
  await patient.getByLabel("Melding", { exact: true }).fill("Jeg har hostet i tre uker.");
  await patient.getByRole("button", { name: "Send til legekontoret" }).click();
  await patient.locator("#messages").getByText("Jeg har hostet i tre uker.").waitFor();
  await gp.getByRole("button", { name: "Oppdater" }).click();
  await gp.getByRole("button", { name: "Ta og svar" }).first().click();
  await gp.locator("#thread").getByText("Jeg har hostet i tre uker.").waitFor();
  await gp.locator("#thread").getByLabel("Svar").fill("Kom innom i morgen.");
  await gp.locator("#thread").getByRole("button", { name: "Send" }).click();
  await patient.locator("#messages").getByText("Kom innom i morgen.").waitFor();
  console.log("OK");
} catch (e) {
  for (const ctx of browser.contexts()) {
    for (const page of ctx.pages()) {
      console.log(`page ${page.url()} status: ${await page.locator("#status").textContent().catch(() => "?")}`);
    }
  }
  throw e;
} finally {
  await browser.close();
}
