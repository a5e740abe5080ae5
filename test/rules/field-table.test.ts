import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { renderFieldTable } from '../../src/rules/field-table.js';
import { FIELDS } from '../../src/rules/catalog.js';

const committed = (): string => readFileSync(fileURLToPath(new URL('../../../docs/fields.md', import.meta.url)), 'utf8');

test('docs/fields.md is what renderFieldTable() renders from the catalog', () => {
  assert.equal(committed(), renderFieldTable(),
    'docs/fields.md is stale: npx tsc -p . && node dist/src/rules/field-table.js > docs/fields.md');
});

test('the field table lists every field once, with its writability', () => {
  const doc = renderFieldTable();
  for (const f of FIELDS) {
    const rows = doc.split('\n').filter((l) => l.startsWith(`| \`${f.name}\` |`));
    assert.equal(rows.length, 1, f.name);
    assert.ok(rows[0]!.includes(f.writable ? '| yes |' : '| no'), f.name);
  }
  assert.match(doc, /\| `ip\.hdr_len` \| 0 to 60, steps of 4 \| byte 0, bits 3-0 \|/);
  assert.match(doc, /\| `tcp\.flags\.push` \| 0 or 1 \| bytes 12-13, bit 3 \|/);
  assert.match(doc, /\| `ip\.addr` \| IPv4 address \| bytes 12-15 \| no \(ip\.src or ip\.dst\) \|/);
});
