// Counts leaf assertions in tap's saved TAP streams (one file per test file) and
// prints 'N passed, N failed' as the last line. Exits 1 when anything failed or
// when there were no results at all, so an empty run never looks green.
// Checks that ran before the tests (lint, typecheck) and failed are passed as
// `--checks-failed N` and count as N more failures.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Parser } from 'tap-parser';

const args = process.argv.slice(2);
const at = args.indexOf('--checks-failed');
const checksFailed = at >= 0 ? Number(args.splice(at, 2)[1]) || 0 : 0;
const dir = args[0] ?? '.tap/test-results';
const files = [];
const walk = (d) => {
  let entries = [];
  try {
    entries = readdirSync(d);
  } catch {
    return;
  }
  for (const name of entries) {
    const path = join(d, name);
    if (statSync(path).isDirectory()) walk(path);
    else if (name.endsWith('.tap')) files.push(path);
  }
};
walk(dir);

let passed = 0;
let failed = checksFailed;
// Named before the summary line, since CI keeps only the tail of a long run's output.
const failedNames = [];
const subtestSummaries = [];
for (const file of files) {
  const testFile = file.replace(/^.*test-results[\\/]/, '').replace(/\.tap$/, '');
  const parser = new Parser();
  // Every subtest is a child parser whose summary line is also an assert of its
  // parent: count asserts at every depth, then take the subtests' summary lines
  // back out, which leaves the leaf assertions.
  const watch = (p) => {
    p.on('assert', (a) => {
      if (a.skip || a.todo) return;
      if (a.ok) passed += 1;
      else {
        failed += 1;
        failedNames.push(`${testFile}: ${a.name}`);
      }
    });
    p.on('child', (child) => {
      watch(child);
      child.on('complete', (r) => {
        // The summary line reports the child's own verdict; undo it so only leaves count.
        if (r.ok) passed -= 1;
        else if (r.fail > 0) {
          failed -= 1;
          subtestSummaries.push(`${testFile}: ${child.name}`);
        }
      });
    });
  };
  watch(parser);
  parser.end(readFileSync(file, 'utf8'));
  // A file whose plan was never completed (crash, timeout) counts as one failure.
  if (!parser.ok && !parser.failures.some((f) => f.ok === false)) {
    failed += 1;
    failedNames.push(`${testFile}: did not complete its plan (crash or timeout)`);
  }
}
for (const summary of subtestSummaries) {
  const at = failedNames.indexOf(summary);
  if (at >= 0) failedNames.splice(at, 1);
}
for (const name of failedNames.slice(0, 20)) console.log(`failed: ${name}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
