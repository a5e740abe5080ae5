import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { LIMITS, MAX_NESTING, MAX_RULE_LENGTH, renderLimitsTable } from '../../src/rules/limits.js';

test('docs/limits.md is what renderLimitsTable() renders from src/rules/limits.ts', () => {
  const committed = readFileSync(fileURLToPath(new URL('../../../docs/limits.md', import.meta.url)), 'utf8');
  assert.equal(committed, renderLimitsTable(), 'docs/limits.md is stale: npx tsc -p . && node dist/src/rules/limits.js > docs/limits.md');
});

test('the table shows every limit with its number', () => {
  const doc = renderLimitsTable();
  for (const l of LIMITS) assert.ok(doc.includes(`| ${l.what} | ${l.value} ${l.unit} |`), l.what);
  assert.ok(doc.includes(`| rule text | ${MAX_RULE_LENGTH} characters |`));
  assert.ok(doc.includes(`| nesting depth | ${MAX_NESTING} levels |`));
});
