// Every player on the page, findable from its element (playlists, the test hook).

export const players = [];
const byElement = new WeakMap();

export function register(player) {
  players.push(player);
  byElement.set(player.root, player);
}

export function playerFor(element) {
  return byElement.get(element) || null;
}
