import t from 'tap';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findNatsServer, NATS_INSTALL_HINT } from '../../fixtures/nats.js';

// The load-sharing test's nats-server must be found or installed, never silently skipped.
const dir = mkdtempSync(join(tmpdir(), 'kvgate-nats-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const sbin = join(dir, 'sbin');
mkdirSync(sbin);
const fake = () => {
  writeFileSync(join(sbin, 'nats-server'), '#!/bin/sh\n');
  chmodSync(join(sbin, 'nats-server'), 0o755);
};

t.test('not installable: fails saying how to install it', async (t) => {
  t.throws(() => findNatsServer({ path: join(dir, 'empty'), extraDirs: [sbin], canInstall: false }), {
    message: new RegExp(`not found on PATH.*${NATS_INSTALL_HINT.slice(0, 30).replace(/[`()]/g, '.')}`),
  });
});

t.test('root: installs once with a one-line notice, then finds it outside PATH', async (t) => {
  const notices: string[] = [];
  let installs = 0;
  const found = findNatsServer({
    path: '',
    extraDirs: [sbin],
    canInstall: true,
    notify: (l) => notices.push(l),
    install: () => {
      installs++;
      fake();
      return undefined;
    },
  });
  t.equal(found, join(sbin, 'nats-server'));
  t.equal(installs, 1);
  t.equal(notices.length, 1);
  t.match(notices[0], /installing .*nats-server with apt-get/);
  // Present now: no second install.
  t.equal(
    findNatsServer({
      path: '',
      extraDirs: [sbin],
      canInstall: true,
      install: () => {
        t.fail('installed twice');
        return undefined;
      },
    }),
    found,
  );
});

t.test('install fails: the error carries why and the hint', async (t) => {
  rmSync(join(sbin, 'nats-server'));
  t.throws(
    () =>
      findNatsServer({
        path: '',
        extraDirs: [sbin],
        canInstall: true,
        notify: () => {},
        install: () => 'E: Unable to locate package',
      }),
    { message: /could not be installed \(E: Unable to locate package\); install it/ },
  );
});
