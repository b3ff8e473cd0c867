// The 10 most frequent actions of the last 7 days, with their share.
// Needs VELORA_API_KEY; VELORA_BASE_URL defaults to https://api.velora.health.
// VELORA_SINCE / VELORA_UNTIL override the range. Node 18+ (built-in fetch), no dependencies.
const baseUrl = process.env.VELORA_BASE_URL ?? "https://api.velora.health";
const until = process.env.VELORA_UNTIL ?? new Date().toISOString();
const since = process.env.VELORA_SINCE ?? new Date(Date.now() - 7 * 86400e3).toISOString();
const query = new URLSearchParams({ since, until, dimension: "action", limit: "10" });

const response = await fetch(`${baseUrl}/api/v2/public/analytics/top?${query}`, {
  headers: { Authorization: `Bearer ${process.env.VELORA_API_KEY}` },
});
if (!response.ok) {
  console.error(`HTTP ${response.status}: ${await response.text()}`);
  process.exit(1);
}
const top = await response.json();
console.log(`${top.total} events`);
for (const item of top.items) {
  console.log(`${item.key}\t${item.count}\t${(item.share * 100).toFixed(1)}%`);
}
