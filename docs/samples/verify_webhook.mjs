// Verify a Velora webhook delivery with Node's crypto only.
// Usage: VELORA_WEBHOOK_SECRET=whsec_... node verify_webhook.mjs request.json
// (request.json: {"headers": {...}, "body": "<the raw body>"}; in a web framework,
// pass the raw request body and its headers to verify() instead).
import { createHmac, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";

const TOLERANCE_S = 300;
const fresh = (t) => /^\d+$/.test(t) && Math.abs(Date.now() / 1000 - Number(t)) <= TOLERANCE_S;
const same = (a, b) => a.length === b.length && timingSafeEqual(Buffer.from(a), Buffer.from(b));

// Velora-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">, keyed with the secret.
export function verifyVeloraSignature(body, header, secret) {
  const items = header.split(",").map((p) => p.split("=", 2));
  const t = (items.find(([k]) => k === "t") || [])[1] || "";
  if (!fresh(t)) return false;
  const expected = createHmac("sha256", secret).update(`${t}.`).update(body).digest("hex");
  return items.some(([k, v]) => k === "v1" && same(v, expected));
}

// webhook-signature: v1,<base64 HMAC-SHA256 of "id.t.body">, keyed with the decoded secret.
export function verifyStandardWebhooks(body, headers, secret) {
  const id = headers["webhook-id"];
  const t = headers["webhook-timestamp"];
  if (!fresh(t)) return false;
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const expected = "v1," + createHmac("sha256", key).update(`${id}.${t}.`).update(body).digest("base64");
  return headers["webhook-signature"].split(" ").some((s) => same(s, expected));
}

export function verify(body, rawHeaders, secret) {
  const headers = Object.fromEntries(Object.entries(rawHeaders).map(([k, v]) => [k.toLowerCase(), v]));
  return verifyVeloraSignature(body, headers["velora-signature"] || "", secret) &&
    verifyStandardWebhooks(body, headers, secret);
}

const request = JSON.parse(readFileSync(process.argv[2], "utf8"));
const body = Buffer.from(request.body, "utf8");
if (!verify(body, request.headers, process.env.VELORA_WEBHOOK_SECRET)) {
  console.log("signature does not verify");
  process.exit(1);
}
for (const line of request.body.split("\n").filter((l) => l.trim())) {
  const event = JSON.parse(line);
  console.log(`verified ${event.id} ${event.type}`);
}
