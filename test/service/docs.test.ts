/**
 * docs/service.md runs as written: every `sh` block in order (the service started here on a
 * socket of its own, the namespaces given unique names), and where the page shows what comes
 * back, the same comes back: the `error`, `at`, `replaced`, `created` … of a JSON sample, a
 * plain sample line for line.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { ROOT, startService } from './support.js';

interface Block {
  lang: string;
  text: string;
  skip: boolean;
}

function blocks(markdown: string): Block[] {
  const out: Block[] = [];
  const re = /(<!-- doc-test: skip[^>]*-->\n)?```(\w*)\n([\s\S]*?)```/g;
  for (let m = re.exec(markdown); m; m = re.exec(markdown)) out.push({ lang: m[2]!, text: m[3]!, skip: m[1] !== undefined });
  return out;
}

/** The sample's stable fields (ids and times differ from run to run). */
const STABLE = ['error', 'hint', 'at', 'replaced', 'created', 'unchanged', 'detached', 'name', 'rules', 'path', 'api', 'paths'];

kernelTest('docs/service.md: every curl example runs as written and answers what the page shows', async () => {
  const nsA = uniqueName('nmda');
  const nsB = uniqueName('nmdb');
  const svc = await startService();
  const del = () => {
    for (const ns of [nsA, nsB]) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  };
  try {
    const page = readFileSync(join(ROOT, 'docs', 'service.md'), 'utf8')
      .replaceAll('/run/netmangle.sock', svc.socket).replaceAll('nmdemo-a', nsA).replaceAll('nmdemo-b', nsB);
    const all = blocks(page);
    let ran = 0;
    let compared = 0;
    all.forEach((b, i) => {
      if (b.lang !== 'sh' || b.skip) return;
      // The first block shows how to start the service in other ways; the test started one.
      if (/^netmangle serve/m.test(b.text)) return;
      const r = spawnSync('bash', ['-euo', 'pipefail', '-c', b.text], { encoding: 'utf8', timeout: 30_000 });
      assert.equal(r.status, 0, `block ${i} failed:\n${b.text}\n${r.stderr}`);
      ran += 1;
      const sample = all[i + 1];
      if (!sample || ['sh', 'ts', 'python', 'ini'].includes(sample.lang)) return;
      if (sample.lang === 'json') {
        let want: Record<string, unknown>;
        try {
          want = JSON.parse(sample.text);
        } catch {
          return; // an abridged sample (`[…]`)
        }
        const got = JSON.parse(r.stdout) as Record<string, unknown>;
        for (const k of STABLE) if (k in want) assert.deepEqual(got[k], want[k], `block ${i}: ${k}\n${b.text}`);
        if ('counters' in want) assert.deepEqual(got.counters, want.counters, `block ${i}: counters`);
      } else {
        assert.equal(r.stdout.trim(), sample.text.trim(), `block ${i}:\n${b.text}`);
      }
      compared += 1;
    });
    assert.ok(ran >= 18 && compared >= 11, `ran ${ran} blocks, compared ${compared} answers`);
    assert.deepEqual((await svc.req('GET', '/faults')).json, [], 'the page cleans up after itself');
  } finally {
    await svc.stop();
    del();
  }
});
