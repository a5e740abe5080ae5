/** The corpus of valid one-line rules the rule and compiler fuzzers mutate. */
import { readFileSync } from 'node:fs';
import { repoPath } from './engine.js';

export const RULE_CORPUS: readonly string[] = readFileSync(repoPath('test/fixtures/fuzz/corpus/rules.txt'), 'utf8').split('\n').filter((l) => l.trim() !== '');
