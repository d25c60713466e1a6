// The reference GraphQL-over-HTTP audit (graphql-http's auditServer) against the
// server whose /graphql URL is the first argument. Prints one JSON line: counts by
// status (ok, notice, warn, error) and every audit that was not ok.
// Run by tests/api/over_http.rs; install with `npm ci --prefix tests/graphql-http`.
import { auditServer } from 'graphql-http';

const url = process.argv[2];
if (!url) {
  console.error('usage: node audit.mjs http://127.0.0.1:PORT/graphql');
  process.exit(2);
}
const results = await auditServer({ url });
const summary = { ok: 0, notice: 0, warn: 0, error: 0, failures: [] };
for (const result of results) {
  summary[result.status] += 1;
  if (result.status !== 'ok') {
    let body;
    try {
      body = await result.response.text();
    } catch {
      body = '(body already read)';
    }
    summary.failures.push({
      id: result.id,
      name: result.name,
      status: result.status,
      reason: result.reason,
      httpStatus: result.response.status,
      contentType: result.response.headers.get('content-type'),
      body: body.slice(0, 500),
    });
  }
}
console.log(JSON.stringify(summary));
