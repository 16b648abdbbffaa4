'use strict';
// The gateway: first hop of the zero-code chain. Node's http only, no OpenTelemetry.
//
// GET /work?<query>  forwards the query to $NEXT_URL/work and answers 200 with the
//                    next hop's body, or 502 when the next hop failed.
// Listens on 127.0.0.1:$PORT and prints "READY <port>" once it does.

const http = require('http');

const port = Number(process.env.PORT);
const next = new URL(process.env.NEXT_URL);

function forward(query, res) {
  const url = new URL(`/work${query}`, next);
  const upstream = http.get(url, (reply) => {
    const chunks = [];
    reply.on('data', (chunk) => chunks.push(chunk));
    reply.on('end', () => {
      const ok = reply.statusCode >= 200 && reply.statusCode < 300;
      res.writeHead(ok ? 200 : 502, { 'content-type': 'text/plain' });
      res.end(ok ? Buffer.concat(chunks) : `next hop answered ${reply.statusCode}\n`);
    });
  });
  upstream.on('error', (error) => {
    res.writeHead(502, { 'content-type': 'text/plain' });
    res.end(`next hop unreachable: ${error.message}\n`);
  });
}

const server = http.createServer((req, res) => {
  const { pathname, search } = new URL(req.url, 'http://gateway');
  if (req.method === 'GET' && pathname === '/work') {
    forward(search, res);
  } else {
    res.writeHead(404).end();
  }
});

server.listen(port, '127.0.0.1', () => {
  console.log(`READY ${server.address().port}`);
});
