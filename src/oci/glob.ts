/**
 * Name patterns as operators write them in rules and filters: `*` is any run of characters
 * and `?` one character, both within a path segment when `segmented` (repository names), `**`
 * any run across segments; everything else is literal.
 */
export function globToRegExp(glob: string, segmented = true): RegExp {
  let source = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*" && glob[i + 1] === "*") {
      source += ".*";
      i++;
    } else if (c === "*") source += segmented ? "[^/]*" : ".*";
    else if (c === "?") source += segmented ? "[^/]" : ".";
    else source += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${source}$`);
}
