// Stream the last 7 days as NDJSON and count events per action, without holding the export.
// Needs VELORA_API_KEY (scope audit:export); VELORA_BASE_URL defaults to https://api.velora.health.
// VELORA_SINCE / VELORA_UNTIL override the range. Node 18+ (built-in fetch), no dependencies.
const baseUrl = process.env.VELORA_BASE_URL ?? "https://api.velora.health";
const until = process.env.VELORA_UNTIL ?? new Date().toISOString();
const since = process.env.VELORA_SINCE ?? new Date(Date.now() - 7 * 86400e3).toISOString();
const query = new URLSearchParams({ since, until, format: "ndjson" });

const response = await fetch(`${baseUrl}/api/v2/public/audit/export?${query}`, {
  headers: { Authorization: `Bearer ${process.env.VELORA_API_KEY}` },
});
if (!response.ok) {
  console.error(`HTTP ${response.status}: ${await response.text()}`);
  process.exit(1);
}
const perAction = new Map();
let events = 0;
let rest = "";
const decoder = new TextDecoder();
for await (const chunk of response.body) {
  const lines = (rest + decoder.decode(chunk, { stream: true })).split("\n");
  rest = lines.pop();
  for (const line of lines) {
    const event = JSON.parse(line);
    perAction.set(event.action, (perAction.get(event.action) ?? 0) + 1);
    events += 1;
  }
}
console.log(`${events} events`);
for (const [action, count] of [...perAction].sort()) console.log(`${action}\t${count}`);
