// The econsult reference web client: patient, practice and a pre-call check, over gRPC-Web
// with clients generated from the protos (protoc-gen-es, connect-web). Text in bokmål.
import { createClient, Code, ConnectError, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { BookingService, Modality } from "./gen/econsult/booking/v1/booking_pb";
import { ConsultationService, Category } from "./gen/econsult/consultation/v1/consultation_pb";
import { AuditService } from "./gen/econsult/audit/v1/audit_pb";
import {
  SignallingService,
  SdpType,
  type ServerEvent,
  ClientSignalSchema,
} from "./gen/econsult/signalling/v1/signalling_pb";

// The API: the page's own origin, or ?api=http://host:port (needs that server's --cors-origin).
const api = new URLSearchParams(location.search).get("api") ?? location.origin;
let token = sessionStorage.getItem("token") ?? "";
// A clinician states why they access patient data (the access log's purpose): this page is
// used for the care of the patient.
let purpose = sessionStorage.getItem("purpose") ?? "";
const transport = createGrpcWebTransport({
  baseUrl: api,
  interceptors: [(next) => async (req) => {
    if (token) req.header.set("authorization", `Bearer ${token}`);
    if (purpose) req.header.set("x-purpose", purpose);
    return next(req);
  }],
});
const booking = createClient(BookingService, transport);
const consultation = createClient(ConsultationService, transport);
const audit = createClient(AuditService, transport);
const signalling = createClient(SignallingService, transport);

const main = document.getElementById("main") as HTMLElement;
const statusLine = document.getElementById("status") as HTMLElement;
const say = (text: string) => { statusLine.textContent = text; };
const key = () => crypto.randomUUID();
const when = (t?: Timestamp) =>
  t ? timestampDate(t).toLocaleString("nb-NO", { timeZone: "Europe/Oslo", dateStyle: "full", timeStyle: "short" }) : "";
const failure = (e: unknown) => say(`Feil: ${e instanceof ConnectError ? e.rawMessage : String(e)}`);

/** Builds an element: h("button", { onclick }, "Bestill"). */
function h<K extends keyof HTMLElementTagNameMap>(
  tag: K, props: Partial<Record<string, unknown>> = {}, ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v as EventListener);
    else if (v !== undefined) el.setAttribute(k, String(v));
  }
  el.append(...children);
  return el;
}
const field = (id: string, label: string, input: HTMLElement) => [h("label", { for: id }, label), input];
const val = (id: string) => (document.getElementById(id) as HTMLInputElement).value.trim();
const act = (fn: () => Promise<void>) => () => { fn().catch(failure); };

async function signIn(query: string) {
  const r = await fetch(`${api}/dev/token?${query}`);
  if (!r.ok) throw new Error(await r.text());
  token = (await r.json()).token;
  sessionStorage.setItem("token", token);
  purpose = query.startsWith("role=clinician") ? "treatment" : "";
  sessionStorage.setItem("purpose", purpose);
}

// ── patient ──────────────────────────────────────────────────────────────────────────────────
function patientPage() {
  main.replaceChildren(
    h("h2", {}, "Pasient"),
    h("section", { "aria-labelledby": "signin-h" },
      h("h3", { id: "signin-h" }, "Logg inn (utvikling)"),
      ...field("nin", "Fødselsnummer (syntetisk)", h("input", { id: "nin", inputmode: "numeric", autocomplete: "off" })),
      h("button", { id: "signin", onclick: act(async () => { await signIn(`role=patient&nin=${val("nin")}`); say("Logget inn."); await refresh(); }) }, "Logg inn")),
    h("section", { "aria-labelledby": "find-h" },
      h("h3", { id: "find-h" }, "Finn time"),
      ...field("modality", "Type time", h("select", { id: "modality" },
        h("option", { value: String(Modality.IN_PERSON) }, "Oppmøte"),
        h("option", { value: String(Modality.VIDEO) }, "Video"))),
      h("button", { id: "find", onclick: act(findSlots) }, "Søk"),
      h("ul", { id: "slots", class: "list", "aria-label": "Ledige timer" })),
    h("section", { "aria-labelledby": "mine-h" },
      h("h3", { id: "mine-h" }, "Mine timer"),
      h("ul", { id: "mine", class: "list" })),
    h("section", { id: "video", "aria-labelledby": "video-h" }, h("h3", { id: "video-h" }, "Videokonsultasjon")),
    h("section", { "aria-labelledby": "ec-h" },
      h("h3", { id: "ec-h" }, "eKonsultasjon"),
      ...field("subject", "Emne", h("input", { id: "subject" })),
      ...field("body", "Melding", h("textarea", { id: "body", rows: "3" })),
      h("button", { id: "start", onclick: act(startConsultation) }, "Send til legekontoret"),
      h("div", { id: "messages", "aria-live": "polite", "aria-label": "Meldinger" })),
    h("section", { "aria-labelledby": "log-h" },
      h("h3", { id: "log-h" }, "Hvem har sett mine opplysninger"),
      h("button", { id: "log", onclick: act(accessLog) }, "Vis logg"),
      h("ul", { id: "access", class: "list" })),
  );
  if (token) refresh().catch(failure);
}

async function findSlots() {
  const modality = Number(val("modality")) as Modality;
  const r = await booking.findSlots({ modality, limit: 10 });
  const list = document.getElementById("slots")!;
  list.replaceChildren(...r.slots.map((o) => h("li", {},
    `${when(o.slot?.start)} hos ${o.gpDisplayName} `,
    h("button", { onclick: act(async () => {
      await booking.holdSlot({ slotId: o.slot!.slotId, idempotencyKey: key() });
      await booking.book({ target: { case: "slotId", value: o.slot!.slotId }, reason: "Bestilt på nett", idempotencyKey: key() });
      say(`Time bestilt: ${when(o.slot?.start)}.`);
      await refresh();
    }) }, "Bestill"))));
  say(r.slots.length ? `${r.slots.length} ledige timer.` : "Ingen ledige timer.");
}

async function refresh() {
  const r = await booking.listMyBookings({ includePast: false });
  const list = document.getElementById("mine");
  if (!list) return;
  list.replaceChildren(...r.appointments.map((a) => h("li", {},
    `${when(a.slot?.start)}${a.slot?.modality === Modality.VIDEO ? " (video)" : ""} `,
    ...(a.slot?.modality === Modality.VIDEO
      ? [h("button", { "data-appointment": a.appointmentId, onclick: act(() => joinVideo(a.appointmentId, "video")) }, "Bli med på video")] : []),
    h("button", { onclick: act(async () => {
      await booking.cancel({ appointmentId: a.appointmentId, idempotencyKey: key() });
      say("Timen er avbestilt."); await refresh();
    }) }, "Avbestill"))));
}

let threadId = "";
async function startConsultation() {
  const r = await consultation.startConsultation({
    category: Category.E_CONSULTATION, subject: val("subject"), body: val("body"), idempotencyKey: key(),
  });
  threadId = r.thread!.threadId;
  say("Sendt. Svar fra legekontoret vises her.");
  follow(threadId, "messages", "patient");
}

/** Shows the thread's messages live (Subscribe), with a reply box. */
async function follow(thread: string, into: string, who: "patient" | "practice") {
  const box = document.getElementById(into)!;
  const form = h("div", {},
    ...field(`${into}-reply`, "Svar", h("textarea", { id: `${into}-reply`, rows: "2" })),
    h("button", { onclick: act(async () => {
      const body = val(`${into}-reply`);
      if (who === "patient") await consultation.sendMessage({ threadId: thread, body, idempotencyKey: key() });
      else await consultation.reply({ threadId: thread, body, idempotencyKey: key() });
      (document.getElementById(`${into}-reply`) as HTMLTextAreaElement).value = "";
    }) }, "Send"));
  const log = h("div", { "data-thread": thread });
  box.replaceChildren(log, form);
  const seen = new Set<string>();
  const changes = who === "patient"
    ? consultation.subscribe({ afterCursor: 0n })
    : consultation.watchInbox({ afterCursor: 0n });
  for await (const ch of changes) {
    const m = ch.message;
    if (!m || m.threadId !== thread || seen.has(m.messageId)) continue;
    seen.add(m.messageId);
    log.append(h("p", { class: "msg" }, m.body));
  }
}

async function accessLog() {
  const r = await audit.listMyAccessLog({ limit: 50 });
  document.getElementById("access")!.replaceChildren(...r.entries.map((e) =>
    h("li", {}, `${when(e.at)}: ${[e.actorName, e.actorHpr && `HPR ${e.actorHpr}`, e.system].filter(Boolean).join(", ") || e.subject}`
      + ` (${e.orgNumber || "—"}) – ${e.description || e.action.split("/").pop()}`)));
}

// ── video (both sides) ───────────────────────────────────────────────────────────────────────
/** The call of one participant: SignalEvents for the events, SendSignal for each message. */
class Call {
  pc!: RTCPeerConnection;
  streamId = "";
  lastSeq = 0n;
  nextId = 2n;
  ended = false;
  queue: Promise<unknown> = Promise.resolve();
  constructor(readonly appointmentId: string, readonly local: MediaStream, readonly remote: HTMLVideoElement,
    readonly patient: boolean) {}

  send(body: MessageInitShape<typeof ClientSignalSchema>["body"]) {
    // One after the other: their order is the order the peer sees.
    const id = this.nextId++;
    this.queue = this.queue.then(async () => {
      const r = await signalling.sendSignal({ appointmentId: this.appointmentId, streamId: this.streamId,
        signal: { clientMsgId: id, body } });
      if (r.result.case === "rejected") say(`Avvist: ${r.result.value.message}`);
    }).catch(failure);
    return this.queue;
  }

  async start(iceServers: RTCIceServer[], resumeAfter: bigint) {
    this.lastSeq = resumeAfter;
    this.pc = new RTCPeerConnection({ iceServers });
    (window as unknown as { econsultPc: RTCPeerConnection }).econsultPc = this.pc;
    this.local.getTracks().forEach((t) => this.pc.addTrack(t, this.local));
    this.pc.ontrack = (e) => { this.remote.srcObject = e.streams[0]; };
    this.pc.onicecandidate = (e) => {
      if (e.candidate) this.send({ case: "candidate", value: {
        candidate: e.candidate.candidate, sdpMid: e.candidate.sdpMid ?? "",
        sdpMlineIndex: e.candidate.sdpMLineIndex ?? undefined, usernameFragment: e.candidate.usernameFragment ?? "" } });
      else this.send({ case: "endOfCandidates", value: {} });
    };
    this.pc.onconnectionstatechange = () => {
      const s = this.pc.connectionState;
      if (s === "connected") { say("Samtalen er i gang."); this.send({ case: "connection", value: { connected: true } }); }
      if (s === "failed" || s === "disconnected") this.send({ case: "connection", value: { connected: false } });
    };
    this.listen();
  }

  /** Follows the events; a dropped stream is resumed after the last seq seen. */
  async listen() {
    while (!this.ended) {
      const w = window as unknown as { econsultStreams: number };
      w.econsultStreams = (w.econsultStreams ?? 0) + 1;
      // A lost network may leave the open response hanging: drop it when the browser goes offline.
      const abort = new AbortController();
      const drop = () => abort.abort();
      window.addEventListener("offline", drop);
      try {
        for await (const ev of signalling.signalEvents({ clientMsgId: 1n,
          hello: { appointmentId: this.appointmentId, resumeAfterSeq: this.lastSeq } }, { signal: abort.signal })) {
          await this.onEvent(ev);
        }
        return; // OK: hung up or ended.
      } catch (e) {
        if (this.ended) return;
        if (e instanceof ConnectError && e.code === Code.FailedPrecondition) {
          // The session ended (or we left it) while we were away: its record says how.
          this.ended = true;
          const s = await signalling.getSession({ appointmentId: this.appointmentId });
          say(s.held ? "Konsultasjonen er avsluttet." : "Samtalen er avsluttet.");
          this.pc.close();
          return;
        }
        say(`Mistet forbindelsen, kobler til igjen … (${e instanceof ConnectError ? e.rawMessage : String(e)})`);
        await new Promise((r) => setTimeout(r, 1000));
      } finally {
        window.removeEventListener("offline", drop);
      }
    }
  }

  async onEvent(ev: ServerEvent) {
    if (ev.seq > 0n) {
      if (ev.seq <= this.lastSeq) throw new Error(`duplicate event ${ev.seq}`);
      this.lastSeq = ev.seq;
      (window as unknown as { econsultSeqs: string[] }).econsultSeqs ??= [];
      (window as unknown as { econsultSeqs: string[] }).econsultSeqs.push(String(ev.seq));
    }
    const b = ev.body;
    switch (b.case) {
      case "welcome": {
        const w = window as unknown as { econsultWelcomes: number };
        w.econsultWelcomes = (w.econsultWelcomes ?? 0) + 1;
        this.streamId = b.value.streamId;
        if (b.value.waiting) say("Du er på venterommet. Legen slipper deg inn.");
        else if (b.value.peerWaiting) say("Pasienten venter på venterommet.");
        else if (b.value.resumed) say("Tilkoblet igjen.");
        break;
      }
      case "admitted":
        say("Legen har sluppet deg inn. Kobler til …");
        if (this.patient) await this.offer();
        break;
      case "peerJoined":
        if (!b.value.waiting && this.patient && b.value.rejoined === false && this.pc.signalingState === "stable"
          && !this.pc.remoteDescription && this.admittedBefore) await this.offer();
        break;
      case "description": {
        const type = b.value.type === SdpType.OFFER ? "offer" : "answer";
        await this.pc.setRemoteDescription({ type, sdp: b.value.sdp });
        if (type === "offer") {
          const answer = await this.pc.createAnswer();
          await this.pc.setLocalDescription(answer);
          this.send({ case: "description", value: { type: SdpType.ANSWER, sdp: answer.sdp ?? "", iceRestart: false } });
        }
        break;
      }
      case "candidate":
        await this.pc.addIceCandidate({ candidate: b.value.candidate, sdpMid: b.value.sdpMid || null,
          sdpMLineIndex: b.value.sdpMlineIndex ?? null });
        break;
      case "peerLeft":
        say("Den andre parten har forlatt samtalen.");
        break;
      case "sessionEnded":
        this.ended = true;
        say(b.value.held ? "Konsultasjonen er avsluttet." : "Samtalen er avsluttet.");
        this.pc.close();
        break;
    }
  }

  admittedBefore = false;
  async offer() {
    this.admittedBefore = true;
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    await this.send({ case: "description", value: { type: SdpType.OFFER, sdp: offer.sdp ?? "", iceRestart: false } });
  }

  async hangUp() {
    this.ended = true;
    await this.send({ case: "hangUp", value: {} });
    this.pc.close();
    this.local.getTracks().forEach((t) => t.stop());
  }
}

async function joinVideo(appointmentId: string, into: string, practice = false) {
  const box = document.getElementById(into)!;
  const joined = await signalling.joinSession({ appointmentId });
  const local = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const me = h("video", { autoplay: "", muted: "", playsinline: "", "aria-label": "Ditt kamera" });
  me.muted = true; me.srcObject = local;
  const peer = h("video", { autoplay: "", playsinline: "", "aria-label": "Den andre parten" });
  const call = new Call(appointmentId, local, peer, !practice);
  const controls = [h("button", { id: "hangup", onclick: act(() => call.hangUp()) }, "Legg på")];
  if (practice) controls.unshift(
    h("button", { id: "admit", onclick: act(async () => { await signalling.admit({ appointmentId }); say("Pasienten er sluppet inn."); }) }, "Slipp inn pasienten"),
    h("button", { id: "end-held", onclick: act(async () => { await signalling.endSession({ appointmentId, held: true }); }) }, "Avslutt som gjennomført"));
  box.replaceChildren(h("h3", {}, "Videokonsultasjon"), me, peer, h("div", {}, ...controls));
  const iceServers = joined.iceServers.map((s) => ({ urls: s.urls, username: s.username || undefined, credential: s.credential || undefined }));
  await call.start(iceServers, joined.resumeAfterSeq);
  say(joined.waiting ? "Du er på venterommet. Legen slipper deg inn." : "Koblet til økten.");
}

// ── practice ─────────────────────────────────────────────────────────────────────────────────
function practicePage() {
  main.replaceChildren(
    h("h2", {}, "Legekontor"),
    h("section", {},
      h("h3", {}, "Logg inn (utvikling)"),
      ...field("hpr", "HPR-nummer", h("input", { id: "hpr", inputmode: "numeric" })),
      ...field("org", "Organisasjonsnummer", h("input", { id: "org", inputmode: "numeric" })),
      h("button", { id: "signin", onclick: act(async () => { await signIn(`role=clinician&hpr=${val("hpr")}&org=${val("org")}`); say("Logget inn."); await inbox(); }) }, "Logg inn")),
    h("section", {}, h("h3", {}, "Innboks (forfalte først)"),
      h("button", { id: "inbox-refresh", onclick: act(inbox) }, "Oppdater"),
      h("ul", { id: "inbox", class: "list" }), h("div", { id: "thread", "aria-live": "polite" })),
    h("section", { id: "pvideo" }, h("h3", {}, "Videokonsultasjon"),
      ...field("appt", "Time-ID", h("input", { id: "appt" })),
      h("button", { id: "pjoin", onclick: act(() => joinVideo(val("appt"), "pvideo", true)) }, "Åpne videorommet")),
  );
}

async function inbox() {
  const r = await consultation.listInbox({ pageSize: 50 });
  const now = Date.now();
  const threads = [...r.threads].sort((a, b) =>
    Number(a.dueAt ? timestampDate(a.dueAt).getTime() : 0) - Number(b.dueAt ? timestampDate(b.dueAt).getTime() : 0));
  document.getElementById("inbox")!.replaceChildren(...threads.map((t) => {
    const overdue = t.dueAt && timestampDate(t.dueAt).getTime() < now;
    return h("li", overdue ? { class: "overdue" } : {}, `${overdue ? "Forfalt: " : ""}${t.subject} (frist ${when(t.dueAt)}) `,
      h("button", { onclick: act(async () => {
        await consultation.claimThread({ threadId: t.threadId, idempotencyKey: key() });
        say("Tatt. Svar pasienten nedenfor.");
        follow(t.threadId, "thread", "practice");
      }) }, "Ta og svar"));
  }));
}

// ── pre-call check ───────────────────────────────────────────────────────────────────────────
function checkPage() {
  main.replaceChildren(h("h2", {}, "Test kamera, mikrofon og nett"),
    ...field("cappt", "Time-ID (for TURN-tilgang)", h("input", { id: "cappt" })),
    h("button", { id: "check", onclick: act(check) }, "Start test"),
    h("ul", { id: "checks", class: "list", "aria-live": "polite" }));
}

async function check() {
  const out = document.getElementById("checks")!;
  const line = (t: string) => out.append(h("li", {}, t));
  out.replaceChildren();
  try {
    const s = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
    line(`Kamera og mikrofon: OK (${s.getTracks().map((t) => t.kind).join(", ")})`);
    s.getTracks().forEach((t) => t.stop());
  } catch (e) { line(`Kamera og mikrofon: ikke tilgang (${String(e)})`); }
  const appt = val("cappt");
  if (!appt) { line("Oppgi time-ID for å teste TURN."); return; }
  const r = await signalling.getIceServers({ appointmentId: appt });
  const pc = new RTCPeerConnection({ iceTransportPolicy: "relay", iceServers: r.iceServers.map((s) => ({ urls: s.urls, username: s.username, credential: s.credential })) });
  pc.createDataChannel("check");
  let relay = 0;
  pc.onicecandidate = (e) => { if (e.candidate?.type === "relay") relay++; };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((r) => setTimeout(r, 5000));
  pc.close();
  line(relay > 0 ? `TURN: OK (${relay} relay-kandidater)` : "TURN: nådde ikke TURN-serveren");
}

// ── routing ──────────────────────────────────────────────────────────────────────────────────
function route() {
  const page = location.hash.slice(1) || "pasient";
  if (page === "legekontor") practicePage();
  else if (page === "sjekk") checkPage();
  else patientPage();
  main.focus();
}
window.addEventListener("hashchange", route);
route();
export type { Client };
