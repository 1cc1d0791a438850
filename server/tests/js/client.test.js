// Runs the official Mattermost JavaScript client (Client4 + WebSocketClient) against the chat
// server at CHAT_SERVER_URL. Started by server/tests/js_client.rs; run alone with
//   CHAT_SERVER_URL=http://127.0.0.1:8065 node --test
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');

// Node 20 has no global WebSocket; the client constructs `new WebSocket(url)`.
globalThis.WebSocket = globalThis.WebSocket || require('ws');

const { Client4, WebSocketClient } = require('@mattermost/client');

const base = process.env.CHAT_SERVER_URL;

function uniq(prefix) {
  return prefix + crypto.randomBytes(4).toString('hex');
}

async function signUp(name) {
  const c = new Client4();
  c.setUrl(base);
  const user = await c.createUser({ username: name, email: `${name}@example.com`, password: 'passw0rd!' }, '', '');
  await c.login(name, 'passw0rd!');
  assert.ok(c.getToken(), 'login must yield a token from the Token header');
  return { c, user };
}

test('Client4 and WebSocketClient work against the server', { skip: !base && 'CHAT_SERVER_URL not set' }, async () => {
  const alice = await signUp(uniq('alice'));
  const bob = await signUp(uniq('bob'));

  const team = await alice.c.createTeam({ name: uniq('team'), display_name: 'JS team', type: 'O' });
  assert.equal(team.type, 'O');
  await alice.c.addToTeam(team.id, bob.user.id);

  const channel = await alice.c.createChannel({ team_id: team.id, name: uniq('chan'), display_name: 'JS channel', type: 'O' });
  const member = await alice.c.addToChannel(bob.user.id, channel.id);
  assert.equal(member.user_id, bob.user.id);

  // Bob listens on the WebSocket (authenticated with authentication_challenge, as browsers do).
  const ws = new WebSocketClient();
  const wsUrl = base.replace(/^http/, 'ws') + '/api/v4/websocket';
  const posted = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no posted event within 10s')), 10000);
    ws.addMessageListener((msg) => {
      if (msg.event === 'posted') {
        clearTimeout(timer);
        resolve(msg);
      }
    });
  });
  const opened = new Promise((resolve) => ws.addFirstConnectListener(resolve));
  const hello = new Promise((resolve) => ws.addMessageListener((msg) => msg.event === 'hello' && resolve(msg)));
  ws.initialize(wsUrl, bob.c.getToken());
  await opened;
  const h = await hello;
  assert.equal(h.seq, 0);
  assert.ok(h.data.connection_id);

  const pong = await new Promise((resolve) => ws.ping(resolve));
  assert.equal(pong.data.text, 'pong');

  const created = await alice.c.createPost({ channel_id: channel.id, message: 'hello from Client4' });
  assert.equal(created.message, 'hello from Client4');

  const ev = await posted;
  const post = JSON.parse(ev.data.post);
  assert.equal(post.id, created.id);
  assert.equal(ev.broadcast.channel_id, channel.id);

  const list = await bob.c.getPosts(channel.id, 0, 30);
  assert.equal(list.order[0], created.id);
  assert.equal(list.posts[created.id].message, 'hello from Client4');

  ws.close();
});
