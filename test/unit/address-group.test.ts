/**
 * Replication counts unfinished handshakes per peer (receiver.ts): an IPv4 address as it is,
 * an IPv6 host by its /64 (it has that many addresses to come from), however it is written.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { addressGroup } from '../../src/replication/receiver.js';

test('handshake limits count IPv4 addresses one by one and IPv6 ones by /64', () => {
  assert.equal(addressGroup('192.0.2.7'), '192.0.2.7');
  assert.equal(addressGroup('::ffff:192.0.2.7'), '192.0.2.7', 'IPv4 mapped into IPv6 is the IPv4 address');
  const group = addressGroup('2001:db8:1:2::1');
  assert.equal(group, '2001:db8:1:2::/64');
  for (const same of ['2001:db8:1:2:ffff:ffff:ffff:fffe', '2001:0db8:0001:0002:0000:0000:0000:0009', '2001:DB8:1:2::abcd%eth0', '2001:db8:1:2:0:0:1.2.3.4']) {
    assert.equal(addressGroup(same), group, `${same} is in the same /64`);
  }
  assert.notEqual(addressGroup('2001:db8:1:3::1'), group, 'the next /64 is another peer');
  assert.equal(addressGroup('::1'), '0:0:0:0::/64');
  assert.equal(addressGroup('2001:db8::'), '2001:db8:0:0::/64');
  assert.equal(addressGroup(''), '', 'no address: counted together');
});
