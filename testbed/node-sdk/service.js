// A tiny HTTP service with no OpenTelemetry setup of its own (register.js
// instruments it), playing one role of tests/trace_e2e.rs's topology:
//
//   entry   GET /?kind=K   calls $E2E_NEXT/verify?kind=K and answers
//                          {"trace": "<trace id>"}; a request without a
//                          traceparent makes this process start the trace
//   auth    GET /verify    calls $E2E_NEXT/work?kind=K; answers 200 whatever
//                          the worker answered, so an error stays below the root
//
// It prints `E2E listening <port>` once it accepts requests.
'use strict';

const http = require('http');
const { trace } = require('@opentelemetry/api');

const role = process.argv[2];
const next = process.env.E2E_NEXT;
if (!['entry', 'auth'].includes(role) || !next) {
  console.error(`usage: E2E_NEXT=host:port node service.js entry|auth (got ${role}, ${next})`);
  process.exit(2);
}
const [nextHost, nextPort] = next.split(':');

function call(path, done) {
  const req = http.get({ host: nextHost, port: Number(nextPort), path }, (res) => {
    res.resume();
    res.on('end', () => done(null, res.statusCode));
  });
  req.on('error', (e) => done(e));
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  const kind = url.searchParams.get('kind') ?? 'normal';
  const downstream = role === 'entry' ? '/verify' : '/work';
  call(`${downstream}?kind=${encodeURIComponent(kind)}`, (err, status) => {
    if (err || (role === 'entry' && status !== 200)) {
      res.writeHead(502).end(String(err ?? status));
      return;
    }
    const span = trace.getActiveSpan();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ trace: span ? span.spanContext().traceId : null }));
  });
});
server.listen(0, '127.0.0.1', () => {
  console.log(`E2E listening ${server.address().port}`);
});
