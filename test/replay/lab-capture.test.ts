/**
 * A capture of real traffic (ping over IPv4 and IPv6, a TCP transfer, a UDP stream), made in a
 * lab with checksum offloads off so that the captured checksums are the final ones, replayed
 * through the article's two rules. tshark is the outside judge: it says which packets match
 * and whether every checksum in the output is right. The output must differ from the input in
 * exactly the matching packets' rule fields and checksums, and --engine jit and --engine
 * kernel must write the same file.
 */
import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { Lab } from '../../src/lab/lab.js';
import { readAllPackets } from '../../src/pcap/index.js';

/** Resolves when the child has exited (at once if it already has: its 'exit' event is gone). */
function exited(child: ChildProcess, ms: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${child.spawnargs.join(' ')} still running after ${ms} ms`)), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

const bin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'netmangle');

const TTL_RULE = 'icmp.type == 0 => set ip.ttl = random(1, ip.ttl)';
const PSH_RULE = 'tcp and not (tcp.flags.syn or tcp.flags.fin or tcp.flags.reset or tcp.flags.push) => set tcp.flags.push = 1';

function tshark(file: string, fields: string[], filter?: string): string[][] {
  const args = ['-r', file, '-o', 'ip.check_checksum:TRUE', '-o', 'tcp.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE', '-T', 'fields', '-E', 'separator=/t'];
  for (const f of fields) args.push('-e', f);
  if (filter) args.push('-Y', filter);
  const r = spawnSync('tshark', args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  assert.equal(r.status, 0, `tshark: ${r.stderr}`);
  return r.stdout.trim().split('\n').filter((l) => l !== '').map((l) => l.split('\t'));
}

/** Frame numbers (1-based) tshark says match a display filter. */
function matching(file: string, filter: string): Set<number> {
  return new Set(tshark(file, ['frame.number'], filter).map((r) => Number(r[0])));
}

const STATUS = ['ip.checksum.status', 'tcp.checksum.status', 'udp.checksum.status', 'icmp.checksum.status', 'icmpv6.checksum.status'];

/** Every checksum tshark checks in the file: how many are good; fails on a bad one. */
function checksumsGood(file: string): number {
  let good = 0;
  for (const row of tshark(file, ['frame.number', ...STATUS])) {
    row.slice(1).forEach((v, i) => {
      for (const s of v.split(',').filter((x) => x !== '')) {
        assert.notEqual(s, '0', `${file}: frame ${row[0]} has a bad ${STATUS[i]}`);
        if (s === '1') good++;
      }
    });
  }
  return good;
}

function replay(rule: string, input: string, out: string, args: string[]): void {
  const r = spawnSync(bin, ['replay', rule, input, '-o', out, '--seed', '2024', ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, `netmangle replay ${args.join(' ')}: ${r.stderr}`);
}

kernelTest('a lab capture (ping, TCP, UDP) replayed through the article\'s two rules: exactly the matching packets change, checksums stay right, jit = kernel', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-replay-lab-'));
  try {
    const capture = join(dir, 'h1.pcap');
    {
      const ends = { tx_checksum: 'off' as const, rx_checksum: 'off' as const };
      await using lab = await Lab.up({ switch: 'sw', hosts: { h1: {}, h2: {} }, links: [{ a: 'h1', b: 'sw', ...ends }, { a: 'h2', b: 'sw', ...ends }] }, { name: uniqueName('rpl') });
      const h2v4 = lab.address('h2', 4);
      const h2v6 = lab.address('h2', 6);
      const tcpdump = lab.spawn('h1', ['tcpdump', '-i', 'eth0', '-nn', '-s', '0', '-U', '-Z', 'root', '-w', capture]);
      let err = '';
      tcpdump.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      for (let i = 0; i < 100 && !/listening on/.test(err); i++) await new Promise((r) => setTimeout(r, 50));
      assert.match(err, /listening on/);
      await lab.exec('h1', ['ping', '-n', '-c', '20', '-i', '0.01', h2v4], { check: true, timeoutMs: 10_000 });
      await lab.exec('h1', ['ping', '-6', '-n', '-c', '10', '-i', '0.01', h2v6], { check: true, timeoutMs: 10_000 });
      const server = lab.spawn('h2', ['iperf3', '-s', '-1', '-B', h2v4, '-p', '5201']);
      for (let i = 0; i < 50; i++) {
        if ((await lab.exec('h2', ['ss', '-ltn', 'sport = :5201'])).stdout.includes('5201')) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      await lab.exec('h1', ['iperf3', '-c', h2v4, '-p', '5201', '-n', '300K'], { check: true, timeoutMs: 20_000 });
      await exited(server, 10_000);
      const udp = lab.spawn('h2', ['iperf3', '-s', '-1', '-B', h2v4, '-p', '5202']);
      for (let i = 0; i < 50; i++) {
        if ((await lab.exec('h2', ['ss', '-ltn', 'sport = :5202'])).stdout.includes('5202')) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      await lab.exec('h1', ['iperf3', '-c', h2v4, '-p', '5202', '-u', '-b', '2M', '-n', '100K', '-l', '900'], { check: true, timeoutMs: 20_000 });
      await exited(udp, 10_000);
      await new Promise((r) => setTimeout(r, 200));
      tcpdump.kill('SIGINT');
      await exited(tcpdump, 10_000);
    }
    const input = (await readAllPackets(capture)).packets;
    const echoReplies = matching(capture, 'icmp.type == 0');
    const pshCandidates = matching(capture, 'tcp and not (tcp.flags.syn == 1 or tcp.flags.fin == 1 or tcp.flags.reset == 1 or tcp.flags.push == 1)');
    assert.equal(echoReplies.size, 20, 'the capture has the 20 echo replies');
    assert.ok(pshCandidates.size > 50, `${pshCandidates.size} TCP segments the PSH rule matches`);
    // About 114 datagrams are sent; a loaded machine may lose some of the first before iperf3's server reads.
    const udpPackets = matching(capture, 'udp').size;
    assert.ok(udpPackets >= 50, `the capture has the UDP stream (${udpPackets} UDP packets)`);
    assert.ok(matching(capture, 'icmpv6.type == 129').size === 10, 'and the IPv6 echo replies');
    assert.ok(checksumsGood(capture) > 500, 'the capture\'s own checksums are final (offloads off)');

    const cases = [
      { rule: TTL_RULE, args: ['--hook', 'xdp'], matches: echoReplies, fields: (f: Uint8Array) => [22, 24, 25].filter((o) => o < f.length) },
      {
        rule: PSH_RULE, args: ['--hook', 'egress', '--probability', '0.1'], matches: pshCandidates,
        fields: (f: Uint8Array) => { const l4 = 14 + (f[14]! & 0xf) * 4; return [l4 + 13, l4 + 16, l4 + 17]; },
      },
    ];
    for (const c of cases) {
      const jit = join(dir, 'jit.pcapng');
      const kernel = join(dir, 'kernel.pcapng');
      replay(c.rule, capture, jit, [...c.args, '--engine', 'jit']);
      replay(c.rule, capture, kernel, [...c.args, '--engine', 'kernel']);
      assert.deepEqual(readFileSync(kernel), readFileSync(jit), `${c.rule}: --engine kernel and --engine jit wrote different files`);
      const output = (await readAllPackets(jit)).packets;
      assert.equal(output.length, input.length, 'nothing dropped');
      let changed = 0;
      output.forEach((p, i) => {
        const before = input[i]!.data;
        assert.deepEqual([p.tsSec, p.tsNsec], [input[i]!.tsSec, input[i]!.tsNsec], 'timestamps kept');
        const diff: number[] = [];
        for (let k = 0; k < before.length; k++) if (before[k] !== p.data[k]) diff.push(k);
        assert.equal(p.data.length, before.length);
        if (diff.length === 0) return;
        changed++;
        assert.ok(c.matches.has(i + 1), `${c.rule}: frame ${i + 1} changed but does not match`);
        const allowed = c.fields(before);
        assert.ok(diff.every((k) => allowed.includes(k)), `${c.rule}: frame ${i + 1} changed bytes ${diff.join(',')} (only ${allowed.join(',')} may change)`);
        assert.ok(p.comment?.startsWith('rule-1: '), `frame ${i + 1} comment ${p.comment}`);
      });
      if (c.rule === TTL_RULE) {
        // random(1, 64) keeps 64 once in 64 draws: nearly every reply changes.
        assert.ok(changed >= 17, `${changed} of 20 echo replies changed`);
        for (const [ttl] of tshark(jit, ['ip.ttl'], 'icmp.type == 0')) assert.ok(Number(ttl) >= 1 && Number(ttl) <= 64, `ttl ${ttl}`);
      } else {
        const share = changed / c.matches.size;
        assert.ok(share > 0.03 && share < 0.25, `PSH set on ${changed} of ${c.matches.size} matching segments`);
        assert.equal(matching(jit, 'tcp.flags.push == 1').size - matching(capture, 'tcp.flags.push == 1').size, changed);
      }
      assert.ok(checksumsGood(jit) > 500, 'checksums right in the output');
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, { timeout: 180_000 });
