/**
 * attach() against the real kernel, in a lab: rules act and count, disposal (explicit, `using`,
 * `await using`, on an exception) leaves nothing on any hook, a namespace given by path works like
 * one given by name, and bad input is refused in one line with nothing left attached.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { attach, build, HookBusyError, Lab, NetmangleError, NotFoundError, parseRules, probe, RuleError, UsageError, type Fault } from '../../src/api/index.js';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { interfacesIn, programsIn, programsOn } from './hooks.js';
import { listAttached } from '../../src/live/registry.js';

const TOPOLOGY = { hosts: { h1: {}, h2: {} }, links: [{ a: 'h1', b: 'h2' }] };

async function ping(lab: Lab, count = 4): Promise<{ received: number; output: string }> {
  const r = await lab.exec('h1', ['ping', '-c', String(count), '-i', '0.05', '-W', '1', lab.address('h2')]);
  const received = Number(/(\d+) received/.exec(r.stdout)?.[1] ?? NaN);
  return { received, output: r.stdout + r.stderr };
}

/** Asserts `fn` throws a NetmangleError whose message's first line matches and leaves the lab's hooks empty. */
async function refused(lab: Lab, fn: () => Promise<Fault>, message: RegExp, cls: abstract new (...args: never[]) => NetmangleError = NetmangleError): Promise<NetmangleError> {
  let caught: unknown;
  try {
    const f = await fn();
    await f.detach();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof cls, `expected a ${cls.name}, got ${String(caught)}`);
  const err = caught as NetmangleError;
  assert.match(err.message.split('\n')[0]!, message);
  assert.ok(!/internal error/.test(err.message));
  for (const h of ['h1', 'h2']) assert.deepEqual(programsIn(lab.netns(h)), [], `nothing attached in ${h} after: ${err.message}`);
  return err;
}

kernelTest('attach(): counters, disposal, namespaces by name and by path, bad input refused with nothing attached', async (t) => {
  const lab = await Lab.up(TOPOLOGY, { name: uniqueName('api') });
  try {
    const h1 = lab.netns('h1');
    const h2 = lab.netns('h2');
    const egress = { dev: 'eth0', hook: 'egress' as const, netns: h1 };

    await t.test('a one-line rule with a trigger acts, counts, and detach() removes it', async () => {
      const fault = await attach('icmp.type == 8 => drop', egress, { every: 2, seed: 7 });
      assert.equal(fault.seed, 7);
      assert.equal(fault.attachments.length, 1);
      const a = fault.attachments[0]!;
      assert.equal(a.path, probe().attach.egress);
      assert.deepEqual(programsOn(h1, 'eth0', 'egress'), [a.programId]);
      await ping(lab, 6);
      const c = fault.counters();
      assert.equal(c.rules.length, 1);
      assert.equal(c.rules[0]!.name, 'rule-1');
      assert.ok(c.rules[0]!.matched >= 6, JSON.stringify(c));
      assert.ok(c.rules[0]!.dropped >= 3, JSON.stringify(c));
      assert.equal(c.rules[0]!.dropped, c.rules[0]!.acted);
      const json = JSON.parse(JSON.stringify(fault)) as { seed: number; attached: boolean; attachments: unknown[]; counters: { rules: Array<{ dropped: number }> } };
      assert.deepEqual([json.seed, json.attached, json.attachments.length], [7, true, 1]);
      assert.ok(json.counters.rules[0]!.dropped >= 3);
      await fault.detach();
      assert.equal(fault.attached, false);
      assert.deepEqual(programsOn(h1, 'eth0', 'egress'), []);
      // The counters read at detach stay readable.
      assert.deepEqual(fault.counters().rules[0], c.rules[0]);
      await fault.detach(); // idempotent
      assert.equal((await ping(lab, 2)).received, 2);
    });

    await t.test('`await using` detaches when the block throws; `using` detaches synchronously', async () => {
      let id = 0;
      await assert.rejects(async () => {
        await using fault = await attach('icmp => drop', egress);
        id = fault.attachments[0]!.programId;
        assert.deepEqual(programsOn(h1, 'eth0', 'egress'), [id]);
        throw new Error('the test body failed');
      }, /the test body failed/);
      assert.ok(id > 0);
      assert.deepEqual(programsOn(h1, 'eth0', 'egress'), []);
      {
        using fault = await attach('icmp => drop', { dev: 'eth0', hook: 'xdp', netns: h2 });
        assert.equal(programsOn(h2, 'eth0', 'xdp').length, 1);
        assert.equal((await ping(lab, 2)).received, 0);
        assert.ok(fault.counters().rules[0]!.dropped >= 2);
      }
      assert.deepEqual(programsOn(h2, 'eth0', 'xdp'), []);
    });

    await t.test('netmangle status sees each fault of the process, until it detaches', async () => {
      const mine = () => listAttached().filter((e) => e.pid === process.pid).map((e) => e.progId).sort();
      const a = await attach('icmp => pass', egress);
      const b = await attach('icmp => pass', { dev: 'eth0', hook: 'ingress', netns: h2 });
      try {
        assert.deepEqual(mine(), [a.attachments[0]!.programId, b.attachments[0]!.programId].sort());
        await a.detach();
        assert.deepEqual(mine(), [b.attachments[0]!.programId]);
      } finally {
        await a.detach();
        await b.detach();
      }
      assert.deepEqual(mine(), []);
    });

    await t.test('several rules make one program; a namespace given as /proc/PID/ns/net', async () => {
      const sleeper = lab.spawn('h2', ['sleep', '60']);
      await new Promise((r) => setTimeout(r, 100));
      const path = `/proc/${sleeper.pid}/ns/net`;
      {
        await using fault = await attach(['icmp.type == 8 and icmp.seq > 1 => drop', 'icmp.type == 8 => pass'], { dev: 'eth0', hook: 'ingress', netns: path });
        assert.equal(fault.attachments.length, 1);
        assert.equal(fault.attachments[0]!.netns, path);
        assert.deepEqual(fault.attachments[0]!.rules.map((r) => r.name), ['rule-1', 'rule-2']);
        // The same hook seen through the name.
        assert.deepEqual(programsOn(h2, 'eth0', 'ingress'), [fault.attachments[0]!.programId]);
        const p = await ping(lab, 3);
        assert.equal(p.received, 1, p.output);
        const [drop, pass] = fault.counters().rules;
        assert.equal(drop!.dropped, 2);
        assert.equal(pass!.acted, 1);
      }
      assert.deepEqual(programsOn(h2, 'eth0', 'ingress'), []);
      sleeper.kill('SIGKILL');
    });

    await t.test('a delay rule in a namespace given by path: the delay line holds packets, and its TAP goes with it', async () => {
      const sleeper = lab.spawn('h1', ['sleep', '60']);
      await new Promise((r) => setTimeout(r, 100));
      const before = interfacesIn(h1);
      {
        await using fault = await attach('icmp.type == 8 => delay 30ms', { dev: 'eth0', hook: 'egress', netns: `/proc/${sleeper.pid}/ns/net` });
        assert.ok(interfacesIn(h1).some((n) => n.startsWith('nmdl')), `a TAP in h1: ${interfacesIn(h1).join(' ')}`);
        const p = await ping(lab, 3);
        assert.equal(p.received, 3, p.output);
        const c = fault.counters();
        assert.equal(c.delayLines.length, 1);
        assert.ok(c.delayLines[0]!.delayed >= 3, JSON.stringify(c.delayLines));
        assert.ok(c.rules[0]!.acted >= 3);
      }
      assert.deepEqual(interfacesIn(h1), before);
      assert.deepEqual(programsIn(h1), []);
      sleeper.kill('SIGKILL');
    });

    await t.test('a parsed rule set; its groups take the target namespace', async () => {
      const set = parseRules('icmp => drop', { dev: 'eth0', hook: 'ingress' }, { name: 'no-icmp', first: 1 });
      const fault = await attach(set, { netns: h2 }, { seed: 1 });
      try {
        assert.equal(fault.attachments[0]!.netns, h2);
        const p = await ping(lab, 3);
        assert.equal(p.received, 2, p.output);
        assert.equal(fault.counters().rules[0]!.name, 'no-icmp');
        assert.equal(fault.counters().rules[0]!.dropped, 1);
      } finally {
        await fault.detach();
      }
    });

    await t.test('replace(): in one step on a tcx link, by detach + attach on netlink; a bad replacement keeps the old rules', async () => {
      const target = { dev: 'eth0', hook: 'ingress' as const, netns: h2 };
      {
        await using fault = await attach('icmp => drop', target, { seed: 5 });
        const first = fault.attachments[0]!.programId;
        assert.equal((await ping(lab, 2)).received, 0);
        const r = await fault.replace('icmp.type == 8 and icmp.seq > 2 => drop');
        assert.deepEqual(r, { atomic: probe().attach.ingress === 'tcx' });
        const second = fault.attachments[0]!.programId;
        assert.notEqual(second, first);
        assert.deepEqual(programsOn(h2, 'eth0', 'ingress'), [second]);
        assert.equal(fault.seed, 5);
        assert.equal(fault.counters().rules[0]!.matched, 0, 'the new program counts from zero');
        const p = await ping(lab, 4);
        assert.equal(p.received, 2, p.output);
        assert.equal(fault.counters().rules[0]!.dropped, 2);

        await assert.rejects(fault.replace('icmp => drp'), RuleError);
        assert.equal(fault.attached, true);
        assert.deepEqual(programsOn(h2, 'eth0', 'ingress'), [second]);
        await assert.rejects(fault.replace('icmp => drop', { dev: 'nope0', hook: 'ingress', netns: h2 }), /^NotFoundError: no interface nope0/);
        assert.deepEqual(programsOn(h2, 'eth0', 'ingress'), [second]);

        // A delay line cannot be swapped in: detach + attach, said so.
        const d = await fault.replace('icmp.type == 8 => delay 1ms', undefined, { first: 1 });
        assert.deepEqual(d, { atomic: false });
        assert.equal(fault.attachments[0]!.rules[0]!.text, 'icmp.type == 8 => delay 1ms');
        assert.equal((await ping(lab, 2)).received, 2);
        assert.equal(fault.counters().delayLines[0]!.delayed, 1);
      }
      assert.deepEqual(programsIn(h2), []);
      {
        await using fault = await attach('icmp => drop', target, { path: 'netlink' });
        assert.equal(fault.attachments[0]!.path, 'netlink');
        const r = await fault.replace('icmp => pass');
        assert.deepEqual(r, { atomic: false });
        assert.equal(fault.attachments[0]!.path, 'netlink');
        assert.deepEqual(programsOn(h2, 'eth0', 'ingress'), [fault.attachments[0]!.programId]);
        assert.equal((await ping(lab, 2)).received, 2);
      }
      assert.deepEqual(programsIn(h2), []);
    });

    await t.test('a hook holding a program netmangle did not attach: HookBusyError, the program left as it was', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'netmangle-api-'));
      try {
        const obj = join(dir, 'foreign.o');
        writeFileSync(obj, build('icmp.type == 8 => pass', { dev: 'eth0', hook: 'xdp' }, { seed: 1 }));
        const add = await lab.exec('h2', ['ip', 'link', 'set', 'dev', 'eth0', 'xdpgeneric', 'obj', obj, 'sec', 'xdp']);
        assert.equal(add.code, 0, add.stderr);
        const foreign = programsOn(h2, 'eth0', 'xdp');
        assert.equal(foreign.length, 1);
        const err = await attach('icmp => drop', { dev: 'eth0', hook: 'xdp', netns: h2 }).then(() => undefined, (e: unknown) => e);
        assert.ok(err instanceof HookBusyError, String(err));
        assert.match(err.message, /already holds XDP program/);
        assert.deepEqual(programsOn(h2, 'eth0', 'xdp'), foreign);
      } finally {
        await lab.exec('h2', ['ip', 'link', 'set', 'dev', 'eth0', 'xdpgeneric', 'off']);
        rmSync(dir, { recursive: true, force: true });
      }
      assert.deepEqual(programsIn(h2), []);
    });

    await t.test('bad input: one line, the right class, nothing attached', async () => {
      const syntax = await refused(lab, () => attach('tcp.flgs => drop', egress), /^unknown field "tcp\.flgs" \(did you mean tcp\.flags\?\)$/, UsageError);
      assert.ok(syntax instanceof RuleError);
      assert.equal(syntax.column, 1);
      assert.equal(syntax.exitCode, 2);
      const col = await refused(lab, () => attach('tcp.dstport == 80 => drip', egress), /drip/, RuleError);
      assert.equal((col as RuleError).column, 22);
      await refused(lab, () => attach('icmp => drop', { dev: 'nope0', hook: 'egress', netns: h1 }), /^no interface nope0 in namespace /, NotFoundError);
      await refused(lab, () => attach('icmp => drop', { dev: 'eth0', hook: 'egress', netns: uniqueName('none') }), /^no network namespace \S+ \(see `ip netns list`\)$/, NotFoundError);
      await refused(lab, () => attach('icmp => drop', { dev: 'eth0', hook: 'egress', netns: '/proc/999999999/ns/net' }), /^no network namespace at \/proc\/999999999\/ns\/net$/, NotFoundError);
      await refused(lab, () => attach('icmp => drop', { dev: 'eth0', hook: 'sideways' as 'egress', netns: h1 }), /^hook must be one of xdp, ingress, egress, not "sideways"$/, UsageError);
      await refused(lab, () => attach('icmp => drop', egress, { every: 0 }), /^every must be a whole number/, UsageError);
      await refused(lab, () => attach('icmp => drop', egress, { probability: 2 }), /^probability must be a number greater than 0/, UsageError);
      await refused(lab, () => attach('icmp => drop', egress, { seed: -1 }), /^seed must be a whole number/, UsageError);
      await refused(lab, () => attach('icmp => drop', egress, { frist: 1 } as never), /^unknown trigger option "frist"$/, UsageError);
      // A delay rule on a missing interface: no TAP left behind either.
      const before = interfacesIn(h1);
      await refused(lab, () => attach('icmp => delay 5ms', { dev: 'nope0', hook: 'egress', netns: h1 }), /^no interface nope0/);
      assert.deepEqual(interfacesIn(h1), before);
    });
  } finally {
    await lab.down();
  }
}, { timeout: 120_000 });
