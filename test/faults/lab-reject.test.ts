/**
 * reject live: h2 listens on TCP 7777; with `tcp.dstport == 7777 => reject` on a hook of the
 * path, h1's connect() fails at once with "connection refused" (ECONNREFUSED, in well under the
 * first SYN retransmission's second), at h1's egress (the RST goes to h1's own ingress), at
 * h2's tc ingress (back out of h2's eth0). Without the rule the same
 * connect() succeeds, so the refusal is the rule's.
 */
import assert from 'node:assert/strict';
import { Lab } from '../../src/lab/index.js';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { startRun } from './lab-support.js';

const TOPOLOGY: Parameters<typeof Lab.up>[0] = { switch: 'sw', hosts: { h1: {}, h2: {} }, links: [{ a: 'h1', b: 'sw' }, { a: 'h2', b: 'sw' }] };

async function connect(lab: Lab): Promise<{ result: string; seconds: number }> {
  const script = `import socket,time,errno\ns=socket.socket()\ns.settimeout(3)\nt=time.monotonic()\ntry:\n  s.connect(('${lab.address('h2')}',7777)); r='connected'\nexcept OSError as e:\n  r=errno.errorcode.get(e.errno, str(e))\nprint(r, '%.3f' % (time.monotonic()-t))\n`;
  const r = await lab.exec('h1', ['python3', '-c', script], { timeoutMs: 20_000 });
  assert.equal(r.code, 0, r.stderr);
  const [result, seconds] = r.stdout.trim().split(' ');
  return { result: result!, seconds: Number(seconds) };
}

kernelTest('lab: reject makes connect() fail at once with connection refused, at h1 egress and h2 ingress', async () => {
  const lab = await Lab.up(TOPOLOGY, { name: uniqueName('rj') });
  const listener = lab.spawn('h2', ['python3', '-c', `import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('${lab.address('h2')}',7777))\ns.listen(64)\ntime.sleep(120)\n`]);
  try {
    await new Promise((r) => setTimeout(r, 500));
    assert.equal((await connect(lab)).result, 'connected', 'without the rule the port is open');
    // Not at xdp: on this lab's veth the XDP_TX'd answer is counted (ethtool -S: xdp_tx) but
    // never seen on the peer, even with GRO on there; the xdp answer is checked by test runs.
    for (const [host, hook] of [['h1', 'egress'], ['h2', 'ingress']] as const) {
      const run = await startRun(['--netns', lab.netns(host), '--dev', 'eth0', '--hook', hook, 'tcp.dstport == 7777 => reject']);
      let outcome: { result: string; seconds: number };
      try {
        outcome = await connect(lab);
      } finally {
        const stopped = await run.stop();
        assert.equal(stopped.code, 0, stopped.output);
        assert.ok((stopped.counters['rule-1']?.acted ?? 0) >= 1, `${host} ${hook}: the rule acted`);
      }
      assert.equal(outcome.result, 'ECONNREFUSED', `${host} ${hook}: ${outcome.result}`);
      assert.ok(outcome.seconds < 0.5, `${host} ${hook}: refused after ${outcome.seconds} s`);
    }
  } finally {
    listener.kill('SIGKILL');
    await lab.down();
  }
}, { timeout: 120_000 });

kernelTest('lab: ping through reject with CODE reports that unreachable code, at h1 egress and h2 ingress', async () => {
  const lab = await Lab.up(TOPOLOGY, { name: uniqueName('rp') });
  try {
    const expected = { 'host-unreachable': /Destination Host Unreachable/, 'port-unreachable': /Destination Port Unreachable/, 'admin-prohibited': /Packet filtered/ } as const;
    for (const [host, hook] of [['h1', 'egress'], ['h2', 'ingress']] as const) {
      for (const [code, pattern] of Object.entries(expected)) {
        const run = await startRun(['--netns', lab.netns(host), '--dev', 'eth0', '--hook', hook, `icmp.type == 8 => reject with ${code}`]);
        let ping: { stdout: string; code: number | null };
        try {
          ping = await lab.exec('h1', ['ping', '-c', '1', '-W', '2', lab.address('h2')], { timeoutMs: 10_000 });
        } finally {
          const stopped = await run.stop();
          assert.equal(stopped.code, 0, stopped.output);
        }
        assert.match(ping.stdout, pattern, `${host} ${hook} ${code}: ${ping.stdout}`);
        assert.match(ping.stdout, new RegExp(`From ${lab.address('h2').replace(/\./g, '\\.')}`), 'from the address pinged');
        assert.notEqual(ping.code, 0);
      }
    }
  } finally {
    await lab.down();
  }
}, { timeout: 120_000 });

kernelTest('lab: ping -6 through reject with CODE reports the ICMPv6 unreachable code (h2 ingress)', async () => {
  const lab = await Lab.up(TOPOLOGY, { name: uniqueName('r6') });
  try {
    const h2v6 = lab.interfaces('h2')[0]!.addresses.find((a) => a.includes(':'))!.split('/')[0]!;
    const expected = { 'port-unreachable': /Destination unreachable: Port unreachable/, 'admin-prohibited': /Destination unreachable: Administratively prohibited/ } as const;
    for (const [code, pattern] of Object.entries(expected)) {
      const run = await startRun(['--netns', lab.netns('h2'), '--dev', 'eth0', '--hook', 'ingress', `icmpv6.type == 128 => reject with ${code}`]);
      let ping: { stdout: string; code: number | null };
      try {
        ping = await lab.exec('h1', ['ping', '-6', '-c', '1', '-W', '2', h2v6], { timeoutMs: 10_000 });
      } finally {
        const stopped = await run.stop();
        assert.equal(stopped.code, 0, stopped.output);
      }
      assert.match(ping.stdout, pattern, `${code}: ${ping.stdout}`);
    }
  } finally {
    await lab.down();
  }
}, { timeout: 120_000 });
