/**
 * watchLink against the kernel: an interface deleted, moved or renamed, its namespace deleted,
 * or deleted and made again under the same name; and notifications lost to a full queue.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { watchLink } from '../../src/kernel/linkwatch.js';
import { ifindexByName } from '../../src/kernel/iface.js';

function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `ip ${args.join(' ')}: ${r.stderr}`);
}

function withNamespace(fn: (ns: string) => void): void {
  const ns = uniqueName('lw');
  ip('netns', 'add', ns);
  try {
    fn(ns);
  } finally {
    spawnSync('ip', ['netns', 'del', ns]);
  }
}

kernelTest('watchLink: a rename and other interfaces coming and going are not a deletion; ip link del is', () => {
  withNamespace((ns) => {
    ip('-n', ns, 'link', 'add', 'w0', 'type', 'veth', 'peer', 'w1');
    using watch = watchLink('w0', ifindexByName('w0', ns), ns);
    assert.equal(watch.check(), undefined);
    ip('-n', ns, 'link', 'set', 'w0', 'name', 'w0b');
    ip('-n', ns, 'link', 'add', 'x0', 'type', 'veth', 'peer', 'x1');
    ip('-n', ns, 'link', 'del', 'x0');
    assert.equal(watch.check(), undefined);
    ip('-n', ns, 'link', 'del', 'w0b');
    assert.equal(watch.check(), `interface w0 in namespace ${ns} was deleted or moved to another namespace`);
    assert.equal(watch.check(), `interface w0 in namespace ${ns} was deleted or moved to another namespace`, 'stays gone');
  });
});

kernelTest('watchLink: moved to another namespace counts as gone', () => {
  withNamespace((ns) => withNamespace((other) => {
    ip('-n', ns, 'link', 'add', 'w0', 'type', 'veth', 'peer', 'w1');
    using watch = watchLink('w0', ifindexByName('w0', ns), ns);
    ip('-n', ns, 'link', 'set', 'w0', 'netns', other);
    assert.match(watch.check() ?? '', /was deleted or moved to another namespace/);
  }));
});

kernelTest('watchLink: the namespace deleted, or deleted and made again under its name, counts as gone', () => {
  withNamespace((ns) => {
    ip('-n', ns, 'link', 'add', 'w0', 'type', 'veth', 'peer', 'w1');
    using watch = watchLink('w0', ifindexByName('w0', ns), ns);
    ip('netns', 'del', ns);
    assert.equal(watch.check(), `namespace ${ns} was deleted`);
  });
  withNamespace((ns) => {
    ip('-n', ns, 'link', 'add', 'w0', 'type', 'veth', 'peer', 'w1');
    using watch = watchLink('w0', ifindexByName('w0', ns), ns);
    ip('netns', 'del', ns);
    ip('netns', 'add', ns);
    ip('-n', ns, 'link', 'add', 'w0', 'type', 'veth', 'peer', 'w1');
    assert.equal(watch.check(), `namespace ${ns} was deleted (a new one has its name)`);
  });
});

kernelTest('watchLink: thousands of unread link events (a full queue) still tell a deletion apart', () => {
  withNamespace((ns) => {
    ip('-n', ns, 'link', 'add', 'w0', 'type', 'veth', 'peer', 'w1');
    using watch = watchLink('w0', ifindexByName('w0', ns), ns);
    // Enough notifications to overflow the socket's receive queue, the watched one still there.
    const batch = Array.from({ length: 1500 }, (_, i) => `link add d${i} type veth peer e${i}\nlink del d${i}`).join('\n');
    const r = spawnSync('ip', ['-n', ns, '-batch', '-'], { input: batch, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(watch.check(), undefined);
    ip('-n', ns, 'link', 'del', 'w0');
    assert.match(watch.check() ?? '', /w0 .*(was deleted|is gone)/);
  });
});

kernelTest('watchLink on a namespace deleted before it started: the first check says so, nothing throws', () => {
  let ns = '';
  withNamespace((name) => {
    ns = name;
  });
  using watch = watchLink('w0', 2, ns);
  assert.equal(watch.check(), `namespace ${ns} was deleted`);
});
