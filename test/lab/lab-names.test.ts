// Labs that cannot collide: `lab up` without a name takes a free one and says so; `lab down`
// without a name removes only the one lab its user built, and never a lab netmangle has no
// record of. Each test acts as a user of its own (SUDO_UID), so `lab down` with no name can
// only ever see the labs this test built, whatever else runs on the machine.
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { listNamespaces, run } from '../../src/lab/run.js';
import { statePath } from '../../src/lab/state.js';
import { assertLabGone, netmangle } from './lab-helpers.js';

const asUser = (uid: number) => ({ env: { ...process.env, SUDO_UID: String(uid) } });
const userOfThisTest = () => 61_000 + (process.pid % 3000) + Math.floor(Math.random() * 1000);
const upName = (stdout: string) => /^lab "([^"]+)" is up$/m.exec(stdout)?.[1];

kernelTest('lab up with no name twice: two labs with different free names, the second says so; lab down with no name asks which, then removes the one left', async () => {
  const me = asUser(userOfThisTest());
  const built: string[] = [];
  try {
    const first = await netmangle(['lab', 'up'], me);
    assert.equal(first.code, 0, first.stderr);
    const a = upName(first.stdout);
    assert.ok(a && /^lab\d*$/.test(a), first.stdout);
    built.push(a);
    const second = await netmangle(['lab', 'up'], me);
    assert.equal(second.code, 0, second.stderr);
    const b = upName(second.stdout);
    assert.ok(b && /^lab\d+$/.test(b) && b !== a, second.stdout);
    built.push(b);
    assert.match(second.stdout, new RegExp(`a lab "lab" exists already, so this one is "${b}": its hosts are nm-${b}-HOST; give --name ${b}`));
    assert.match(second.stdout, new RegExp(`try: netmangle lab exec --name ${b} h1 -- ping`));
    const namespaces = await listNamespaces();
    for (const n of [a, b]) for (const h of ['h1', 'h2', 'sw']) assert.ok(namespaces.includes(`nm-${n}-${h}`), `nm-${n}-${h}`);

    const which = await netmangle(['lab', 'down'], me);
    assert.equal(which.code, 2, which.stderr);
    assert.match(which.stderr, new RegExp(`^netmangle: you have 2 labs \\((${a}, ${b}|${b}, ${a})\\): say which$`, 'm'));
    assert.ok((await listNamespaces()).includes(`nm-${a}-h1`), 'nothing removed');

    const named = await netmangle(['lab', 'down', a], me);
    assert.equal(named.code, 0, named.stderr);
    assert.equal(named.stdout, `lab "${a}" removed (nm-${a}-h1, nm-${a}-h2, nm-${a}-sw)\n`);
    await assertLabGone(a);
    // One lab of this user left: exec and down find it without a name.
    const pinged = await netmangle(['lab', 'exec', 'h1', '--', 'ping', '-c', '1', '-W', '2', '198.18.0.2'], me);
    assert.equal(pinged.code, 0, pinged.stderr);
    const down = await netmangle(['lab', 'down'], me);
    assert.equal(down.code, 0, down.stderr);
    assert.equal(down.stdout, `lab "${b}" removed (nm-${b}-h1, nm-${b}-h2, nm-${b}-sw)\n`);
    await assertLabGone(b);
    const none = await netmangle(['lab', 'down'], me);
    assert.equal(none.code, 0, none.stderr);
    assert.match(none.stdout, /^no lab of yours to remove/);
  } finally {
    for (const n of built) await netmangle(['lab', 'down', n]);
  }
});

kernelTest("lab down with no name leaves another user's lab alone", async () => {
  const other = asUser(userOfThisTest());
  const me = asUser(userOfThisTest() + 1);
  const name = uniqueName('lo');
  try {
    assert.equal((await netmangle(['lab', 'up', '--name', name], other)).code, 0);
    const down = await netmangle(['lab', 'down'], me);
    assert.equal(down.code, 0, down.stderr);
    assert.match(down.stdout, new RegExp(`^no lab of yours to remove \\(other labs: .*\\b${name}\\b.*; name one to remove it: netmangle lab down NAME\\)$`, 'm'));
    assert.ok((await listNamespaces()).includes(`nm-${name}-h1`), 'the other lab is still there');
    const byName = await netmangle(['lab', 'down', name], me);
    assert.equal(byName.code, 0, byName.stderr);
    assert.match(byName.stdout, new RegExp(`^lab "${name}" removed \\(nm-${name}-h1, nm-${name}-h2, nm-${name}-sw\\)$`, 'm'));
    await assertLabGone(name);
  } finally {
    await netmangle(['lab', 'down', name]);
  }
});

kernelTest('namespaces named like a lab with no record are not netmangle\'s: lab down names them and leaves them', async () => {
  const name = uniqueName('lr');
  const namespaces = [`nm-${name}-h1`, `nm-${name}-h2`];
  try {
    for (const ns of namespaces) assert.equal((await run(['ip', 'netns', 'add', ns])).code, 0);
    const down = await netmangle(['lab', 'down', name]);
    assert.equal(down.code, 1, down.stderr);
    assert.equal(down.stderr, `netmangle: netmangle has no record of creating lab "${name}", so it leaves ${namespaces.join(', ')} alone\n  if they are yours, remove them with: ip netns del ${namespaces[0]}; ip netns del ${namespaces[1]}\n`);
    const left = await listNamespaces();
    for (const ns of namespaces) assert.ok(left.includes(ns), ns);
  } finally {
    for (const ns of namespaces) await run(['ip', 'netns', 'del', ns]);
    rmSync(statePath(name), { force: true });
  }
});
