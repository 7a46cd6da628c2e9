#!/usr/bin/env python3
"""Usage: tools/function_lengths.py LIMIT DIR... -- every function longer than LIMIT lines, longest first (issue 16:
no function over ~120 lines without a stated reason; docs/architecture.md).

Function lengths by brace counting: lines from a function body's opening '{' to its closing '}' (inclusive).
Comments, string/char literals (raw strings too) and preprocessor lines are blanked first. A '{' opens a function
body when it is not inside another function and its header (text since the previous ';', '{' or '}') has a ')' after
which only qualifiers, a trailing return type or a constructor's initializer list follow; namespace/class/struct/enum
bodies are scopes. Lambdas and local classes count toward their enclosing function."""
import re, sys, os

def blank(src):
    out = []; i = 0; n = len(src)
    while i < n:
        c = src[i]
        if src.startswith('//', i):
            j = src.find('\n', i); j = n if j < 0 else j
            out.append(' ' * (j - i)); i = j
        elif src.startswith('/*', i):
            j = src.find('*/', i + 2); j = n if j < 0 else j + 2
            out.append(re.sub(r'[^\n]', ' ', src[i:j])); i = j
        elif c == 'R' and src.startswith('R"', i) and (i == 0 or not (src[i-1].isalnum() or src[i-1] == '_')):
            m = re.match(r'R"([^(\s]*)\(', src[i:])
            end = src.find(')' + m.group(1) + '"', i) + len(m.group(1)) + 2
            out.append('""' + re.sub(r'[^\n]', ' ', src[i+2:end])); i = end
        elif c == '"' or (c == "'" and not (i > 0 and src[i-1].isalnum())):
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == '\\' else 1
            out.append(c + ' ' * (j - i - 1) + c); i = j + 1
        elif c == '#' and (i == 0 or src[:i].rstrip(' \t').endswith('\n') or src[:i].strip() == ''):
            j = i
            while True:
                k = src.find('\n', j); k = n if k < 0 else k
                if src[k-1:k] == '\\': j = k + 1; continue
                break
            out.append(re.sub(r'[^\n]', ' ', src[i:k])); i = k
        else:
            out.append(c); i += 1
    return ''.join(out)

SCOPE = re.compile(r'^\s*(template\s*<.*>\s*)?(inline\s+)?(export\s+)?(namespace|class|struct|union|enum)\b|^\s*extern\s*""\s*$', re.S)
QUAL = re.compile(r'^\s*((const|noexcept(\s*\(.*\))?|override|final|mutable|&|&&|->[^{;]*?|requires[^{;]*)\s*)*$', re.S)
INIT = re.compile(r'^\s*((const|noexcept|override|final)\s*)*:(?!:)', re.S)

def header_opens_function(h):
    if SCOPE.match(h) or '(' not in h: return False
    if re.match(r'^\s*(=|return\b)', h): return False
    # text after the last top-level ')'
    depth = 0; last = -1
    for k, ch in enumerate(h):
        if ch == '(': depth += 1
        elif ch == ')':
            depth -= 1
            if depth == 0: last = k
    if last < 0: return False
    tail = h[last+1:]
    return bool(QUAL.match(tail) or INIT.match(tail))

def functions(path):
    src = blank(open(path, encoding='utf-8', errors='replace').read())
    stack = []  # entries: ('scope'|'func'|'other', start_line, name)
    head_start = 0; line = 1; res = []
    in_func = 0; init_list = False
    i = 0
    for i, ch in enumerate(src):
        if ch == '\n': line += 1
        if in_func:
            if ch == '{': stack.append(('other', line, None))
            elif ch == '}':
                kind, start, name = stack.pop()
                if kind == 'func':
                    in_func = 0; res.append((end_len(start, line), name, start)); head_start = i + 1
            continue
        if ch == ';': head_start = i + 1
        elif ch == '{':
            h = src[head_start:i]
            if header_opens_function(h) and not re.search(r'[A-Za-z0-9_>]\s*$', h.split(')')[-1] if ':' in h.split(')')[-1] else ''):
                name = re.findall(r'([~A-Za-z_][\w:~<>]*(?:operator\s*\S+)?)\s*\(', h)
                stack.append(('func', line, name[0] if name else '?')); in_func = 1
            elif SCOPE.match(h) or h.strip() == '' and stack and stack[-1][0] == 'scope':
                stack.append(('scope', line, None)); head_start = i + 1
            else:
                stack.append(('other', line, None))
            if not in_func: head_start = i + 1
        elif ch == '}':
            if stack: stack.pop()
            head_start = i + 1
    return res

def end_len(start, end): return end - start + 1

if __name__ == '__main__':
    limit = int(sys.argv[1]); roots = sys.argv[2:]
    rows = []
    for root in roots:
        for dp, dn, fn in os.walk(root):
            dn[:] = [d for d in dn if d not in ('build', '.git')]
            for f in fn:
                if f.endswith(('.cpp', '.hpp', '.cu', '.cuh')):
                    p = os.path.join(dp, f)
                    for n, name, start in functions(p):
                        if n > limit: rows.append((n, p, start, name))
    for n, p, start, name in sorted(rows, reverse=True):
        print(f'{n:5d}  {p}:{start}  {name}')
