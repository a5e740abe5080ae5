/**
 * The TypeScript client (`netmangle/client`, imported by the package's own name as a user
 * would) against a real service: a RemoteFault with the library Fault's shape, counters of
 * real packets, `await using` detaching, errors as ServiceError, TCP with a token.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, ServiceError } from 'netmangle/client';
import { kernelTest } from '../helpers/kernel.js';
import { createVethLab } from '../kernel/bpf-fixtures.js';
import { startService, tcxPrograms } from './support.js';

kernelTest('client: attach through the service, count real packets, update in place, detach with await using', async () => {
  const lab = createVethLab();
  const svc = await startService();
  const client = new Client({ socket: svc.socket });
  try {
    assert.equal((await client.version()).pid, svc.proc.pid);
    const target = { dev: lab.devA, hook: 'egress' as const, netns: lab.nsA };
    {
      await using fault = await client.attach('icmp.type == 8 => drop', target, { name: 'drop-two', first: 2, seed: 5 });
      assert.equal(fault.name, 'drop-two');
      assert.equal(fault.seed, 5);
      assert.deepEqual(fault.attachments.map((a) => [a.dev, a.hook, a.path]), [[lab.devA, 'egress', 'tcx']]);
      assert.deepEqual(tcxPrograms(lab.nsA, lab.devA), fault.attachments.map((a) => a.programId));
      lab.ping(4); // ping succeeds with any answer: the counters tell how many were dropped
      const c = (await fault.counters()).rules[0]!;
      assert.deepEqual([c.name, c.acted, c.dropped], ['rule-1', 2, 2]);
      assert.ok(c.matched >= 4);
      assert.equal(await fault.update({ first: null }), 'atomically');
      assert.deepEqual(tcxPrograms(lab.nsA, lab.devA), fault.attachments.map((a) => a.programId), 'the handle knows the new program');
      assert.equal(lab.ping(2), false, 'now every echo request is dropped');
      assert.deepEqual(await fault.replace('icmp.type == 8 => pass', target), { atomic: true }, 'the library Fault\'s replace()');
      assert.ok(lab.ping(2));
      assert.equal((await client.list()).length, 1);
    }
    assert.deepEqual(await client.list(), [], 'await using detached it');
    assert.deepEqual(tcxPrograms(lab.nsA, lab.devA), []);
    assert.ok(lab.ping(2));

    await assert.rejects(client.attach(['icmp => pass', 'icmp => dorp'], target, { name: 'bad' }), (err: unknown) => {
      assert.ok(err instanceof ServiceError);
      assert.equal(err.status, 400);
      assert.deepEqual(err.at, { field: 'rules[1]', column: 9 });
      return true;
    });
    await assert.rejects(client.get('nope'), (err: unknown) => err instanceof ServiceError && err.status === 404 && err.message === 'no fault named nope');

    const listed = await client.populate([{ name: 'p', rules: 'udp => pass', ...target }]);
    assert.deepEqual(listed.created, ['p']);
    const p = await client.fault('p');
    assert.equal(p.attachments[0]!.programId, listed.faults[0]!.programs[0]);
    assert.match(await client.metrics(), /^netmangle_rule_matched_total\{fault="p",rule="rule-1",/m);
    assert.deepEqual(await client.reset(), ['p']);
    await p.detach(); // already gone: not an error
    assert.equal(p.attached, false);
  } finally {
    client.close();
    await svc.stop();
    lab.destroy();
  }
});

kernelTest('client: TCP with a token; without one, 401; no service, a clear error', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-cli-'));
  try {
    const tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, 'Zr8TqK2mW9xLc4Vb6Np1\n', { mode: 0o600 });
    const svc = await startService(['--listen', '127.0.0.1:0', '--token-file', tokenFile], { dir });
    try {
      const { port } = svc.where as { port: number };
      const client = new Client({ url: `http://127.0.0.1:${port}`, tokenFile });
      assert.equal((await client.version()).pid, svc.proc.pid);
      client.close();
      const anonymous = new Client({ url: `http://127.0.0.1:${port}` });
      await assert.rejects(anonymous.list(), (err: unknown) => err instanceof ServiceError && err.status === 401);
      anonymous.close();
    } finally {
      await svc.stop();
    }
    const none = new Client({ socket: join(dir, 'absent.sock') });
    await assert.rejects(none.version(), (err: unknown) => err instanceof ServiceError && err.status === 0 && /^no netmangle service at .*absent\.sock \(ENOENT\)$/.test(err.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
