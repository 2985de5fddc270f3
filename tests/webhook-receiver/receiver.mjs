// A webhook receiver for Switchboard's end-to-end tests (127.0.0.1 only). Every delivery is
// verified with the Standard Webhooks reference library (npm `standardwebhooks`).
//
//   node receiver.mjs          prints {"port": N} on stdout once listening
//   POST /_control/<name>      {"secret": "whsec_…", "fail_first": n, "hang": bool}: how
//                              POST /hooks/<name> answers (500 for the first n verified
//                              deliveries, no answer at all while hang is set, then 204)
//   GET  /_received            every delivery seen: {name, id, timestamp, verified, status,
//                              payload, error}
import http from "node:http";
import swh from "standardwebhooks";

const { Webhook } = swh;
const configs = new Map();
const counts = new Map();
const received = [];

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

const server = http.createServer(async (req, res) => {
  const body = await readBody(req);
  const url = new URL(req.url, "http://127.0.0.1");
  if (req.method === "POST" && url.pathname.startsWith("/_control/")) {
    configs.set(url.pathname.slice("/_control/".length), JSON.parse(body));
    res.writeHead(204).end();
    return;
  }
  if (req.method === "GET" && url.pathname === "/_received") {
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(received));
    return;
  }
  if (req.method === "POST" && url.pathname.startsWith("/hooks/")) {
    const name = url.pathname.slice("/hooks/".length);
    const cfg = configs.get(name);
    const entry = {
      name,
      id: req.headers["webhook-id"] ?? null,
      timestamp: req.headers["webhook-timestamp"] ?? null,
      verified: false,
      status: 0,
      payload: null,
      error: null,
    };
    received.push(entry);
    if (!cfg) {
      entry.status = 503;
      entry.error = "receiver not configured";
      res.writeHead(503).end();
      return;
    }
    try {
      entry.payload = new Webhook(cfg.secret).verify(body, req.headers);
      entry.verified = true;
    } catch (e) {
      entry.status = 400;
      entry.error = String(e && e.message ? e.message : e);
      res.writeHead(400).end();
      return;
    }
    if (cfg.hang) {
      entry.status = -1; // never answered
      return;
    }
    const n = (counts.get(name) ?? 0) + 1;
    counts.set(name, n);
    entry.status = n <= (cfg.fail_first ?? 0) ? 500 : 204;
    res.writeHead(entry.status).end();
    return;
  }
  res.writeHead(404).end();
});

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + "\n");
});
