/**
 * Replay's outputs stay byte for byte what they were: for a set of rules × the capture
 * fixtures × the VM engines × both output formats, the sha256 of the capture written and the
 * summary's counts are compared with test/fixtures/replay/outputs.json, written by the code
 * before the replay loop learnt to skip unchanged packets (no comparison, no copy, large
 * writes). A faster loop must leave every byte, comment and count where it was.
 *
 * To rewrite the goldens after a deliberate change of output: NETMANGLE_WRITE_GOLDEN=1 with
 * this test alone, then review the diff.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPcapWriter } from '../../src/pcap/index.js';
import { replayCapture, type ReplayEngine, type ReplaySummary } from '../../src/replay/index.js';
import { parseRuleLine } from '../../src/rules/load.js';
import type { Hook } from '../../src/rules/ast.js';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'test', 'fixtures');
const goldenFile = join(fixtures, 'replay', 'outputs.json');
/** Every packet shape of the compiler tests, 8 rounds at 1 ms steps, frozen as a file (see writeShapesCapture). */
const shapesCapture = join(fixtures, 'replay', 'shapes.pcap');

interface Case {
  rule: string;
  hook: Hook;
  probability?: number;
  every?: number;
}

const CASES: Case[] = [
  { rule: 'ip => set ip.ttl = 7', hook: 'xdp' },
  // Stores into every IPv4 packet, mostly the value already there: written, yet unchanged.
  { rule: 'ip => set ip.ttl = 64', hook: 'xdp' },
  { rule: 'udp => drop', hook: 'xdp' },
  { rule: 'tcp.flags.push => set ip.dsfield.dscp = 46', hook: 'xdp' },
  { rule: 'ip or ipv6 => set ip.ttl = random(1, 255), set ipv6.hlim = random(1, 255)', hook: 'xdp', probability: 0.5 },
  { rule: 'tcp => corrupt 3', hook: 'xdp' },
  { rule: 'ip => truncate 60', hook: 'xdp' },
  { rule: 'ip.ttl == 64 => pass', hook: 'xdp' },
  { rule: 'icmp or tcp.flags.syn => reject', hook: 'ingress' },
  { rule: 'udp => duplicate 2', hook: 'ingress' },
  { rule: 'ip => set ip.ttl = 9, truncate 80', hook: 'ingress' },
  { rule: 'tcp => set tcp.window_size_value = 0', hook: 'egress', every: 3 },
  { rule: 'udp => delay 5ms jitter 2ms', hook: 'egress' },
  { rule: 'tcp.flags.push => reorder by 2 timeout 4ms', hook: 'xdp' },
  { rule: 'udp => set ip.ttl = 3, delay 2ms', hook: 'ingress' },
];

const ENGINES: ReplayEngine[] = ['jit', 'interp'];
const FORMATS = ['pcap', 'pcapng'] as const;

function inputs(): string[] {
  const dir = join(fixtures, 'pcap');
  const files = readdirSync(dir).filter((f) => /\.(pcap|pcapng)$/.test(f)).sort().map((f) => join(dir, f));
  return [shapesCapture, ...files];
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function summaryLine(s: ReplaySummary): string {
  const rules = s.rules.map((r) => `${r.seen}/${r.matched}/${r.acted}/${r.changed}/${r.dropped}${r.delayed !== undefined ? `/${r.delayed}/${r.reordered}/${r.overLimit}` : ''}`).join(' ');
  const n = s.notRun;
  const h = s.held ? ` held ${s.held.delayed}/${s.held.reordered}/${s.held.overtaken}/${s.held.timedOut}/${s.held.overLimit}/${s.held.followers}/${s.held.peakHeld}` : '';
  return `in ${s.packetsIn} out ${s.packetsOut} changed ${s.changed} dropped ${s.dropped} notRun ${n.tooShort}/${n.cutIpHeader}/${n.kernelRefused} rules ${rules}${h}`;
}

const keyOf = (c: Case, input: string, engine: ReplayEngine, format: string): string =>
  `${c.hook} ${c.rule}${c.probability !== undefined ? ` p=${c.probability}` : ''}${c.every !== undefined ? ` every=${c.every}` : ''} | ${input.slice(fixtures.length + 1)} | ${engine} | ${format}`;

async function outcomes(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const c of CASES) {
    const { groups } = parseRuleLine(c.rule, { dev: 'replay', hook: c.hook, probability: c.probability, every: c.every });
    for (const input of inputs()) {
      for (const engine of ENGINES) {
        for (const format of FORMATS) {
          const output = join(dir, `out.${format}`);
          const s = await replayCapture({ groups, seed: 11, engine, input, output, format });
          out[keyOf(c, input, engine, format)] = `${sha256(readFileSync(output))} ${summaryLine(s)}`;
        }
      }
    }
  }
  return out;
}

/** Writes the shapes capture (only when regenerating: the test reads the committed file). */
async function writeShapesCapture(): Promise<void> {
  const { shapes } = await import('../compiler/shapes.js');
  const w = createPcapWriter(shapesCapture, { nanosecond: true });
  let i = 0;
  for (let round = 0; round < 8; round++) {
    for (const [, p] of shapes()) {
      w.write({ data: p.frame, tsSec: 1_700_000_000 + Math.floor(i / 1000), tsNsec: (i % 1000) * 1_000_000 + 123 });
      i++;
    }
  }
  await w.close();
}

test('replay outputs are byte-identical to the goldens: rules × fixtures × engines × formats', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-golden-'));
  try {
    if (process.env.NETMANGLE_WRITE_GOLDEN === '1') {
      if (!existsSync(shapesCapture)) await writeShapesCapture();
      writeFileSync(goldenFile, JSON.stringify(await outcomes(dir), null, 1) + '\n');
    }
    const golden = JSON.parse(readFileSync(goldenFile, 'utf8')) as Record<string, string>;
    const now = await outcomes(dir);
    assert.deepEqual(Object.keys(now).sort(), Object.keys(golden).sort(), 'the set of cases changed: regenerate the goldens deliberately');
    const differing = Object.keys(golden).filter((k) => golden[k] !== now[k]);
    assert.deepEqual(differing.map((k) => `${k}\n  was ${golden[k]}\n  now ${now[k]}`), []);
    // The cases cover what they mean to: some packets changed, some dropped, some held, some copied.
    const all = Object.values(golden).join('\n');
    for (const what of [/changed [1-9]/, /dropped [1-9]/, /held [1-9]/]) assert.match(all, what);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
