/**
 * 50 clients at once for 30 s, creating, reading and deleting faults on shared hooks (and
 * racing for the same names): every fault a client was told exists is listed, none it deleted
 * is, and the programs on the hooks (from the kernel) are exactly the listed faults' programs.
 */
import assert from 'node:assert/strict';
import { kernelTest } from '../helpers/kernel.js';
import { createVethLab } from '../kernel/bpf-fixtures.js';
import { startService, tcxPrograms } from './support.js';

const CLIENTS = 50;
const SECONDS = 30;

kernelTest(`serve: ${CLIENTS} clients creating and deleting faults for ${SECONDS} s lose none and leak none`, async (t) => {
  const lab = createVethLab();
  const svc = await startService();
  try {
    const targets = [
      { dev: lab.devA, netns: lab.nsA, hook: 'ingress' }, { dev: lab.devA, netns: lab.nsA, hook: 'egress' },
      { dev: lab.devB, netns: lab.nsB, hook: 'ingress' }, { dev: lab.devB, netns: lab.nsB, hook: 'egress' },
    ];
    const deadline = Date.now() + SECONDS * 1000;
    const owned = new Set<string>();
    const counts = { created: 0, deleted: 0, taken: 0, reads: 0 };
    const unexpected: string[] = [];
    const worker = async (id: number) => {
      const mine: string[] = [];
      let n = 0;
      while (Date.now() < deadline && unexpected.length === 0) {
        const roll = (id * 7 + n) % 10;
        n += 1;
        if (roll < 4 || mine.length === 0) {
          // Every fifth create races the other clients for one of a few shared names.
          const name = n % 5 === 0 ? `shared-${n % 3}` : `c${id}-${n}`;
          const t = targets[(id + n) % targets.length]!;
          const r = await svc.req('POST', '/faults', { name, rules: `udp.dstport == ${1024 + ((id * 31 + n) % 6000)} => drop`, ...t });
          if (r.status === 201) {
            mine.push(name);
            owned.add(name);
            counts.created += 1;
          } else if (r.status === 409 && name.startsWith('shared-')) counts.taken += 1;
          else unexpected.push(`POST ${name}: ${r.status} ${r.text}`);
        } else if (roll < 8) {
          const name = mine.splice((id + n) % mine.length, 1)[0]!;
          const r = await svc.req('DELETE', `/faults/${name}`);
          if (r.status === 204) {
            owned.delete(name);
            counts.deleted += 1;
          } else unexpected.push(`DELETE ${name}: ${r.status} ${r.text}`);
        } else {
          const name = mine[n % mine.length]!;
          const r = await svc.req('GET', `/faults/${name}`);
          if (r.status === 200 && r.json.name === name) counts.reads += 1;
          else unexpected.push(`GET ${name}: ${r.status} ${r.text}`);
        }
      }
    };
    await Promise.all(Array.from({ length: CLIENTS }, (_, i) => worker(i)));
    assert.deepEqual(unexpected, []);
    assert.ok(counts.created > CLIENTS && counts.deleted > CLIENTS, JSON.stringify(counts));

    const listed = (await svc.req('GET', '/faults')).json as Array<{ name: string; programs: number[] }>;
    assert.deepEqual(listed.map((f) => f.name).sort(), [...owned].sort(), 'the faults listed are those the clients were told exist');
    const onHooks = [...tcxPrograms(lab.nsA, lab.devA), ...tcxPrograms(lab.nsB, lab.devB)].sort((a, b) => a - b);
    assert.deepEqual(onHooks, listed.flatMap((f) => f.programs).sort((a, b) => a - b), 'programs on the hooks = the listed faults\' programs');
    t.diagnostic(`${counts.created} created, ${counts.deleted} deleted, ${counts.taken} name races lost, ${counts.reads} reads; ${listed.length} left, reset`);

    const reset = await svc.req('POST', '/reset');
    assert.equal(reset.json.detached.length, listed.length);
    assert.deepEqual([...tcxPrograms(lab.nsA, lab.devA), ...tcxPrograms(lab.nsB, lab.devB)], []);
  } finally {
    await svc.stop();
    lab.destroy();
  }
}, { timeout: 180_000 });
