// The compiled test files (dist/test/**/*.test.js), sorted, whose path contains one of `filters`
// (all of them without filters): what scripts/run-tests.mjs and the kernel matrix's driver run.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (name.endsWith('.test.js')) out.push(p);
  }
  return out;
}

export function testFiles(filters = []) {
  return walk('dist/test').sort().filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)));
}
