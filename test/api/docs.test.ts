/**
 * docs/api.md runs as written: its example is test/api/article-example.test.ts character for
 * character (so the suite runs the doc's code), and its first snippet type-checks against the
 * package's declarations and does what its comments say.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { kernelTest, uniqueName } from '../helpers/kernel.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const DOC = readFileSync(join(ROOT, 'docs', 'api.md'), 'utf8');

/** The ```ts (or ```js) blocks of the doc, in order. */
function blocks(lang: 'ts' | 'js'): string[] {
  return [...DOC.matchAll(new RegExp(`^\`\`\`${lang}\n([\\s\\S]*?)^\`\`\`$`, 'gm'))].map((m) => m[1]!);
}

test('docs/api.md: the example is test/api/article-example.test.ts, unchanged', () => {
  const marker = '<!-- example: test/api/article-example.test.ts -->\n```ts\n';
  const at = DOC.indexOf(marker);
  assert.ok(at >= 0, 'the example marker is in docs/api.md');
  const end = DOC.indexOf('\n```\n', at + marker.length);
  const inDoc = DOC.slice(at + marker.length, end + 1);
  const file = readFileSync(join(ROOT, 'test', 'api', 'article-example.test.ts'), 'utf8');
  assert.equal(inDoc, file, 'docs/api.md and test/api/article-example.test.ts differ: copy the test file into the doc');
});

kernelTest('docs/api.md: the first snippet compiles against the installed types and drops every second echo request', async () => {
  const snippet = blocks('ts')[0]!;
  assert.match(snippet, /^import \{ attach, Lab \} from 'netmangle';/);
  // Its own lab name, so it cannot meet a lab called "lab" someone has up.
  const name = uniqueName('doc');
  const source = snippet.replace('Lab.up()', `Lab.up(undefined, { name: '${name}' })`);
  assert.notEqual(source, snippet);
  // Inside the project, so 'netmangle' resolves to this package (its exports), as in an installed copy.
  const dir = join(ROOT, 'dist', 'doc-check', name);
  mkdirSync(dir, { recursive: true });
  try {
    writeFileSync(join(dir, 'quickstart.mts'), source);
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', lib: ['es2022', 'esnext.disposable'], strict: true,
        types: ['node'], typeRoots: [join(ROOT, 'node_modules', '@types')],
      },
      files: ['quickstart.mts'],
    }));
    const tsc = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', dir], { encoding: 'utf8' });
    assert.equal(tsc.status, 0, tsc.stdout + tsc.stderr);
    const run = spawnSync(process.execPath, [join(dir, 'quickstart.mjs')], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(run.status, 0, run.stdout + run.stderr);
    assert.match(run.stdout, /4 packets transmitted, 2 received/);
    assert.match(run.stdout, /matched: 4,\s+acted: 2,\s+dropped: 2/);
  } finally {
    spawnSync(join(ROOT, 'bin', 'netmangle'), ['lab', 'down', name], { encoding: 'utf8' });
    rmSync(dir, { recursive: true, force: true });
  }
});

kernelTest('docs/api.md: the plain JavaScript snippet runs as written (try … finally)', () => {
  const snippet = blocks('js')[0]!;
  assert.match(snippet, /^import \{ attach, Lab \} from 'netmangle';/);
  const name = uniqueName('docjs');
  const source = snippet.replace('Lab.up()', `Lab.up(undefined, { name: '${name}' })`);
  assert.notEqual(source, snippet);
  const dir = join(ROOT, 'dist', 'doc-check', name);
  mkdirSync(dir, { recursive: true });
  try {
    writeFileSync(join(dir, 'snippet.mjs'), source);
    const run = spawnSync(process.execPath, [join(dir, 'snippet.mjs')], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(run.status, 0, run.stdout + run.stderr);
    assert.equal(run.stdout.trim(), '1');
  } finally {
    spawnSync(join(ROOT, 'bin', 'netmangle'), ['lab', 'down', name], { encoding: 'utf8' });
    rmSync(dir, { recursive: true, force: true });
  }
});
