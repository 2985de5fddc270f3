// An MCP client for Switchboard's end-to-end tests, built on the official TypeScript SDK
// (@modelcontextprotocol/sdk, streamable HTTP transport). Usage: node client.mjs URL TOKEN.
// It reads one JSON step per line on stdin and answers each with one JSON line on stdout:
// {"ok": <SDK result>} or {"error": {"name", "code", "message"}} (the SDK's exception).
// Steps: {"op":"connect"}, {"op":"list_tools"}, {"op":"call","name":..,"arguments":{..}},
// {"op":"close"}. The token travels as `Authorization: Bearer` on every request.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import readline from 'node:readline';

const [url, token] = process.argv.slice(2);
let client = null;
let transport = null;

const ops = {
  async connect() {
    client = new Client({ name: 'switchboard-it', version: '0.0.0' });
    transport = new StreamableHTTPClientTransport(new URL(url), {
      requestInit: { headers: { Authorization: `Bearer ${token}` } },
    });
    await client.connect(transport);
    return {
      server: client.getServerVersion(),
      capabilities: client.getServerCapabilities(),
      instructions: client.getInstructions() ?? null,
      sessionId: transport.sessionId ?? null,
      protocolVersion: transport.protocolVersion ?? null,
    };
  },
  async list_tools() {
    return await client.listTools();
  },
  async call(step) {
    return await client.callTool({ name: step.name, arguments: step.arguments ?? {} });
  },
  async close() {
    await client.close();
    return {};
  },
};

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const step = JSON.parse(line);
  let out;
  try {
    out = { ok: await ops[step.op](step) };
  } catch (e) {
    out = {
      error: {
        name: e?.constructor?.name ?? 'Error',
        code: e?.code ?? null,
        message: String(e?.message ?? e),
      },
    };
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}
