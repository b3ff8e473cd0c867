// Your first call: the 10 newest audit events of your tenant, printed as JSON.
// Needs VELORA_API_KEY; VELORA_BASE_URL defaults to https://api.velora.health.
// Node 18+ (built-in fetch), no dependencies.
const baseUrl = process.env.VELORA_BASE_URL ?? "https://api.velora.health";
const apiKey = process.env.VELORA_API_KEY;

const response = await fetch(`${baseUrl}/api/v2/public/audit/events?limit=10`, {
  headers: { Authorization: `Bearer ${apiKey}` },
});
if (!response.ok) {
  console.error(`HTTP ${response.status}: ${await response.text()}`);
  process.exit(1);
}
console.log(JSON.stringify(await response.json(), null, 2));
