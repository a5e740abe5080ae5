/**
 * The timed triggers live, through `netmangle run` on h1's egress, judged by h2's kernel
 * (UdpNoPorts counts the datagrams that got through a drop rule):
 * - `--limit 100/s` over about 3 s of roughly 1000 datagrams/s drops 100 per second of
 *   sending, within 10%;
 * - `--pin --for 2s`: the pinned rule, with no netmangle process left, drops for 2 s after its
 *   first match and then lets everything through.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Lab } from '../../src/lab/index.js';
import { nstatSnapshot } from '../../src/lab/measure.js';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { startRun } from './lab-support.js';

const BIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'netmangle');
const TOPOLOGY: Parameters<typeof Lab.up>[0] = { switch: 'sw', hosts: { h1: {}, h2: {} }, links: [{ a: 'h1', b: 'sw' }, { a: 'h2', b: 'sw' }] };

/** Sends datagrams h1 → h2:9999 every `gapMs` for `seconds`; returns how many were sent, with their send times (s, from the first). */
async function send(lab: Lab, seconds: number, gapMs: number): Promise<{ sent: number; times: number[] }> {
  const script = `import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nt0=time.monotonic()\nts=[]\nwhile time.monotonic()-t0<${seconds}:\n  s.sendto(b'x'*32,('${lab.address('h2')}',9999))\n  ts.append(time.monotonic()-t0)\n  time.sleep(${gapMs / 1000})\nprint(' '.join('%.4f'%t for t in ts))\n`;
  const r = await lab.exec('h1', ['python3', '-c', script], { timeoutMs: 60_000 });
  assert.equal(r.code, 0, r.stderr);
  const times = r.stdout.trim().split(' ').map(Number);
  return { sent: times.length, times };
}

kernelTest('lab: --limit 100/s drops 100 datagrams per second of a faster stream, within 10%', async () => {
  const lab = await Lab.up(TOPOLOGY, { name: uniqueName('lim') });
  try {
    const before = await nstatSnapshot(lab, 'h2');
    const run = await startRun(['--netns', lab.netns('h1'), '--dev', 'eth0', '--hook', 'egress', 'udp.dstport == 9999 => drop', '--limit', '100/s']);
    let sent: { sent: number; times: number[] };
    let counters: Record<string, number> = {};
    try {
      sent = await send(lab, 3, 1);
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      const stopped = await run.stop();
      assert.equal(stopped.code, 0, stopped.output);
      counters = stopped.counters['rule-1']!;
    }
    const after = await nstatSnapshot(lab, 'h2');
    const through = after.UdpNoPorts! - before.UdpNoPorts!;
    const span = sent.times[sent.times.length - 1]! - sent.times[0]!;
    const expected = 100 * span;
    assert.ok(sent.sent > 3 * expected, `offered ${sent.sent} in ${span.toFixed(2)} s: well above the limit`);
    assert.equal(counters.matched, sent.sent);
    assert.equal(counters.dropped, sent.sent - through, 'what was not dropped arrived');
    assert.ok(Math.abs(counters.dropped! - expected) <= 0.1 * expected, `dropped ${counters.dropped} in ${span.toFixed(2)} s; expected ${expected.toFixed(0)} ± 10%`);
  } finally {
    await lab.down();
  }
}, { timeout: 120_000 });

kernelTest('lab: a pinned rule with --for 2s stops dropping 2 s after its first match, with no process left', async () => {
  const lab = await Lab.up(TOPOLOGY, { name: uniqueName('for') });
  const ns = lab.netns('h1');
  try {
    const pinned = await promisify(execFile)(process.execPath, [BIN, 'run', '--netns', ns, '--dev', 'eth0', '--hook', 'egress', 'udp.dstport == 9999 => drop', '--pin', '--for', '2s']);
    assert.match(pinned.stdout, /attached and pinned/);
    const before = await nstatSnapshot(lab, 'h2');
    const { sent, times } = await send(lab, 4, 10);
    await new Promise((r) => setTimeout(r, 300));
    const after = await nstatSnapshot(lab, 'h2');
    const through = after.UdpNoPorts! - before.UdpNoPorts!;
    const dropped = sent - through;
    // The first datagram starts the rule's clock: those sent in its first 2 s are dropped
    // (give or take the scheduling of one or two datagrams at the edge).
    const inWindow = times.filter((t) => t < 2).length;
    assert.ok(Math.abs(dropped - inWindow) <= 3, `dropped ${dropped}, sent in the first 2 s ${inWindow} of ${sent}`);
    assert.ok(through >= sent - inWindow - 3, 'everything after the window got through');
  } finally {
    await promisify(execFile)(process.execPath, [BIN, 'clear', '--netns', ns]).catch(() => {});
    await lab.down();
  }
}, { timeout: 120_000 });
