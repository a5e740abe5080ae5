// The article's bug as a test: the first data segment of each connection arrives late, after
// the segments behind it. The receiver must queue them out of order, and still get every byte.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { attach, Lab, nstatDelta, nstatSnapshot } from 'netmangle';

const CONNECTIONS = 4;
const BYTES = 4 * 1024 * 1024; // per connection
const PORT = 9000;

// A small TCP server: for each connection, the number of bytes and their SHA-256 as one JSON line.
const SERVER = `
  const { createHash } = require('node:crypto');
  let left = ${CONNECTIONS};
  const server = require('node:net').createServer((socket) => {
    const hash = createHash('sha256');
    let bytes = 0;
    socket.on('data', (chunk) => { bytes += chunk.length; hash.update(chunk); });
    socket.on('end', () => {
      console.log(JSON.stringify({ bytes, sha256: hash.digest('hex') }));
      socket.end();
      if (--left === 0) server.close();
    });
  });
  server.listen(${PORT}, () => console.log('listening'));
`;

// The client: CONNECTIONS connections at once, each sending BYTES in 64 KiB writes; prints what it sent.
const CLIENT = `
  const { createHash } = require('node:crypto');
  const [host] = process.argv.slice(1);
  const send = (n) => new Promise((resolve, reject) => {
    const chunk = Buffer.alloc(65536, n + 1);
    const hash = createHash('sha256');
    const socket = require('node:net').connect(${PORT}, host, async () => {
      for (let sent = 0; sent < ${BYTES}; sent += chunk.length) {
        hash.update(chunk);
        if (!socket.write(chunk)) await new Promise((r) => socket.once('drain', r));
      }
      socket.end();
    });
    socket.on('error', reject);
    socket.on('close', () => resolve(hash.digest('hex')));
    socket.resume();
  });
  Promise.all(Array.from({ length: ${CONNECTIONS} }, (_, n) => send(n))).then((h) => console.log(JSON.stringify(h)));
`;

let lab: Lab;

before(async () => {
  // h1 ── h2 on one veth pair, each host a network namespace of its own.
  lab = await Lab.up({ hosts: { h1: {}, h2: {} }, links: [{ a: 'h1', b: 'h2' }] }, { name: `article-${process.pid}` });
});

after(async () => {
  await lab?.down();
});

/** One transfer from h1 to the server on h2: what was sent, what arrived, and h2's out-of-order count. */
async function transfer(): Promise<{ sent: string[]; received: Array<{ bytes: number; sha256: string }>; outOfOrder: number }> {
  // Both ends on CPU 0: veth would otherwise reorder a little by itself, across CPUs.
  const server = lab.spawn('h2', ['taskset', '-c', '0', process.execPath, '-e', SERVER]);
  let output = '';
  server.stdout!.setEncoding('utf8').on('data', (d: string) => (output += d));
  const done = new Promise((resolve) => server.on('close', resolve));
  while (!output.includes('listening')) await new Promise((r) => setTimeout(r, 20));

  const before = await nstatSnapshot(lab, 'h2');
  const client = await lab.exec('h1', ['taskset', '-c', '0', process.execPath, '-e', CLIENT, lab.address('h2')], { check: true });
  await done;
  const after = await nstatSnapshot(lab, 'h2');
  return {
    sent: JSON.parse(client.stdout) as string[],
    received: output.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { bytes: number; sha256: string }),
    outOfOrder: nstatDelta(before, after, ['TcpExtTCPOFOQueue']).TcpExtTCPOFOQueue!,
  };
}

function assertEveryByte(t: Awaited<ReturnType<typeof transfer>>): void {
  assert.equal(t.received.length, CONNECTIONS);
  for (const r of t.received) assert.equal(r.bytes, BYTES);
  assert.deepEqual(t.received.map((r) => r.sha256).sort(), [...t.sent].sort());
}

test('without a fault: every byte arrives, nothing out of order', async () => {
  const t = await transfer();
  assertEveryByte(t);
  assert.equal(t.outOfOrder, 0);
});

test('the first data segment of each connection held 2 ms: out of order at the receiver, every byte still arrives', async () => {
  // The sender's first PSH segment with data (ip.len > 200: not a bare ACK) on each connection.
  await using fault = await attach(
    'tcp.flags.push and ip.len > 200 => delay 2ms',
    { dev: 'eth0', hook: 'egress', netns: lab.netns('h1') },
    { first: 1, perConnection: true },
  );
  const t = await transfer();
  const [rule] = fault.counters().rules;
  assert.equal(rule!.acted, CONNECTIONS); // one segment held per connection
  assert.ok(t.outOfOrder >= CONNECTIONS, `TcpExtTCPOFOQueue grew by ${t.outOfOrder}`);
  assertEveryByte(t);
});
