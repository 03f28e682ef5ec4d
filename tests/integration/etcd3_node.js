// The Node.js etcd3 client (npm "etcd3", on @grpc/grpc-js) through its main features
// against the endpoint given as argument; prints one JSON array of results.
// Run by tests/integration/test_kv_node_etcd3.py against Lattice and a real etcd.
'use strict';
const { Etcd3 } = require('etcd3');

const client = new Etcd3({ hosts: process.argv[2] });

async function main() {
  const out = [];
  await client.put('foo').value('bar');
  out.push(['get', await client.get('foo').string()]);
  await client.put('dir/a').value('1');
  await client.put('dir/b').value('2');
  out.push(['prefix', await client.getAll().prefix('dir/').strings()]);
  out.push(['count', await client.getAll().prefix('dir/').count()]);
  out.push(['keys', await client.getAll().prefix('dir/').sort('Key', 'Descend').keys()]);

  const watcher = await client.watch().prefix('w/').create();
  const events = [];
  const done = new Promise((resolve) => {
    watcher.on('put', (kv) => events.push(['put', kv.key.toString(), kv.value.toString()]));
    watcher.on('delete', (kv) => {
      events.push(['delete', kv.key.toString()]);
      resolve();
    });
  });
  await client.put('w/1').value('one');
  await client.put('w/2').value('two');
  await client.delete().key('w/1');
  await done;
  out.push(['watch', events]);
  await watcher.cancel();

  const lease = client.lease(10);
  await lease.put('leased').value('x');
  await lease.keepaliveOnce();
  out.push(['leased', await client.get('leased').string()]);
  await lease.revoke();
  out.push(['afterRevoke', await client.get('leased').string()]);

  const lock = client.lock('mylock');
  await lock.acquire();
  out.push(['locked', true]);
  await lock.release();

  const election = client.election('el');
  const campaign = election.campaign('cand1');
  await new Promise((resolve, reject) => {
    campaign.on('elected', resolve);
    campaign.on('error', reject);
  });
  out.push(['leader', await election.leader()]);
  await campaign.resign();

  const txn = await client
    .if('foo', 'Value', '==', 'bar')
    .then(client.put('foo').value('baz'))
    .else(client.get('foo'))
    .commit();
  out.push(['txn', txn.succeeded, await client.get('foo').string()]);
  await client.stm().transact((tx) =>
    tx.get('ctr').then((v) => tx.put('ctr').value(String(Number(v || 0) + 1))));
  out.push(['stm', await client.get('ctr').string()]);
  await client.delete().all();
  out.push(['empty', await client.getAll().count()]);
  console.log(JSON.stringify(out));
}

main()
  .then(() => client.close())
  .catch((error) => {
    console.error('FAILED', error);
    process.exit(1);
  });
