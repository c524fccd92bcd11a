#!/usr/bin/env python3
"""Rewrites a CUDA source into C++ for the host emulator (tools/cuda-emu/README.md).

    rewrite.py SRC.cu OUT.cpp [--name kernels/x.cu]

  kernel<<<grid, block[, smem[, stream]]>>>(args)  ->  emu::Launcher("kernel", __FILE__, __LINE__,
                                                        grid, block, smem, stream).run(kernel, args)
  extern __shared__ [__align__(n)] T name[];       ->  T* name = static_cast<T*>(::emu::dyn_smem());
  __shared__ T a[N], b;                            ->  static T a_emu_sets[::emu::kBlockSets][N];
                                                        T (&a)[N] = a_emu_sets[::emu::block_set()]; (b alike;
                                                        with __align__(n), each set's copy in an aligned struct)
  __launch_bounds__(N, ...) kernel(...) {           ->  kernel(...) { ::emu::check_launch_bounds(N, ...);

Line numbers are kept (a #line directive names the original file), so compiler messages and the
emulator's reports (divergent barriers, rejected launches) point into the .cu file. Fails (exit 1)
when a launch or a shared declaration cannot be rewritten: nothing is silently left for the
compiler to choke on or, worse, to compile into something else.
"""
import argparse
import re
import sys


def strip_comments(src):
    """The source with comments and string/char literal contents blanked (same length, same newlines)."""
    out = list(src)
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith('//', i):
            j = src.find('\n', i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = ' '
            i = j
        elif src.startswith('/*', i):
            j = src.find('*/', i + 2)
            if j < 0:
                raise SystemExit('rewrite.py: unterminated comment')
            for k in range(i, j + 2):
                if src[k] != '\n':
                    out[k] = ' '
            i = j + 2
        elif c in '"\'':
            # raw strings are not expected in kernels/*.cu; refuse them rather than misparse
            if c == '"' and i > 0 and src[i - 1] == 'R':
                raise SystemExit('rewrite.py: raw string literals are not supported')
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == '\\' else 1
            for k in range(i + 1, min(j, n)):
                if src[k] != '\n':
                    out[k] = ' '
            i = j + 1
        else:
            i += 1
    return ''.join(out)


def match_forward(code, i, open_c, close_c):
    """Index just past the bracket closing the one at code[i] (== open_c)."""
    assert code[i] == open_c
    depth = 0
    for j in range(i, len(code)):
        if code[j] == open_c:
            depth += 1
        elif code[j] == close_c:
            depth -= 1
            if depth == 0:
                return j + 1
    return -1


def line_of(code, i):
    return code.count('\n', 0, i) + 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('src')
    ap.add_argument('out')
    ap.add_argument('--name', help='file name for #line (default: SRC)')
    a = ap.parse_args()
    src = open(a.src).read()
    name = a.name or a.src
    code = strip_comments(src)
    edits = []  # (start, end, replacement)
    errors = []

    # ---- kernel launches
    launches = 0
    for m in re.finditer(r'<<<', code):
        p = m.start()
        # the kernel expression before <<<: name, optionally qualified, optionally <template args>
        j = p
        while j > 0 and code[j - 1].isspace():
            j -= 1
        end_k = j
        if j > 0 and code[j - 1] == '>':
            depth = 0
            while j > 0:
                j -= 1
                if code[j] == '>':
                    depth += 1
                elif code[j] == '<':
                    depth -= 1
                    if depth == 0:
                        break
            if depth != 0:
                errors.append(f'{name}:{line_of(code, p)}: unbalanced template arguments before <<<')
                continue
        while j > 0 and (code[j - 1].isalnum() or code[j - 1] in '_:'):
            j -= 1
        kernel = src[j:end_k].strip()
        if not re.match(r'^[A-Za-z_][\w:]*(<.*>)?$', kernel, re.S):
            errors.append(f'{name}:{line_of(code, p)}: cannot tell the kernel of this launch ({kernel!r})')
            continue
        q = code.find('>>>', p + 3)
        if q < 0:
            errors.append(f'{name}:{line_of(code, p)}: <<< without >>>')
            continue
        cfg = src[p + 3:q]
        r = q + 3
        while r < len(code) and code[r].isspace():
            r += 1
        if r >= len(code) or code[r] != '(':
            errors.append(f'{name}:{line_of(code, p)}: no argument list after >>>')
            continue
        close = match_forward(code, r, '(', ')')
        if close < 0:
            errors.append(f'{name}:{line_of(code, p)}: unbalanced argument list')
            continue
        no_args = code[r + 1:close - 1].strip() == ''
        kname = re.sub(r'\s+', ' ', kernel)
        # keep the newlines of what is replaced (line numbers stay)
        between = src[q + 3:r + 1]
        rep = (f'::emu::Launcher("{kname}", __FILE__, __LINE__, {cfg}).run({kernel}'
               + ('' if no_args else ', ') + '\n' * between.count('\n'))
        edits.append((j, r + 1, rep))
        launches += 1

    # ---- dynamic shared memory
    dyn = 0
    for m in re.finditer(r'\bextern\s+__shared__\b', code):
        semi = code.find(';', m.end())
        decl = code[m.end():semi]
        d = re.fullmatch(r'\s*((?:__align__\s*\(\s*\d+\s*\)\s*)?)([A-Za-z_][\w\s:]*?)\s*'
                         r'((?:__align__\s*\(\s*\d+\s*\)\s*)?)\b(\w+)\s*\[\s*\]\s*', decl)
        if semi < 0 or not d:
            errors.append(f'{name}:{line_of(code, m.start())}: cannot rewrite this extern __shared__ declaration')
            continue
        typ, var = d.group(2).strip(), d.group(4)
        rep = f'{typ}* {var} = static_cast<{typ}*>(::emu::dyn_smem());' + '\n' * src[m.start():semi].count('\n')
        edits.append((m.start(), semi + 1, rep))
        dyn += 1

    # ---- static shared memory: one copy per block set (::emu::kBlockSets), the running block's by
    # reference, so that blocks --racecheck treats as concurrent do not share it
    static = 0
    for m in re.finditer(r'(?<!extern )\b__shared__\b', code):
        if re.search(r'\bextern\s+$', code[:m.start()]):
            continue
        semi = code.find(';', m.end())
        decl = code[m.end():semi]
        d = re.fullmatch(r'\s*((?:__align__\s*\(\s*\d+\s*\)\s*)?)((?:unsigned\s+|signed\s+)?[A-Za-z_][\w:]*)\s+'
                         r'(\w+\s*(?:\[[^\]\[]+\]\s*)*(?:,\s*\w+\s*(?:\[[^\]\[]+\]\s*)*)*)', decl)
        if semi < 0 or not d or '\n' in decl:
            errors.append(f'{name}:{line_of(code, m.start())}: cannot rewrite this __shared__ declaration')
            continue
        align, typ = d.group(1).strip(), d.group(2).strip()
        parts = []
        for v in d.group(3).split(','):
            v = v.strip()
            var = re.match(r'\w+', v).group(0)
            dims = v[len(var):].replace(' ', '')
            if align:  # each set's copy aligned (a struct: an array of arrays aligns only its start)
                parts.append(f'static struct {align} {{ {typ} v{dims}; }} {var}_emu_sets[::emu::kBlockSets]; '
                             f'{typ} (&{var}){dims} = {var}_emu_sets[::emu::block_set()].v;')
            else:
                parts.append(f'static {typ} {var}_emu_sets[::emu::kBlockSets]{dims}; '
                             f'{typ} (&{var}){dims} = {var}_emu_sets[::emu::block_set()];')
        edits.append((m.start(), semi + 1, ' '.join(parts)))
        static += 1

    # ---- __launch_bounds__ -> a check at the kernel's entry
    bounds = 0
    for m in re.finditer(r'\b__launch_bounds__\s*\(', code):
        open_p = m.end() - 1
        close_p = match_forward(code, open_p, '(', ')')
        args = src[open_p + 1:close_p - 1]
        first = args.split(',')[0].strip()
        k = re.match(r'\s*(\w+)\s*\(', code[close_p:])
        if not k:
            continue  # not followed by a kernel name: the macro drops it
        params_open = close_p + k.end() - 1
        params_close = match_forward(code, params_open, '(', ')')
        b = params_close
        while b < len(code) and code[b].isspace():
            b += 1
        if b >= len(code) or code[b] != '{':
            continue  # a declaration
        edits.append((m.start(), close_p, ' ' * (close_p - m.start()) if '\n' not in src[m.start():close_p]
                      else '\n' * src[m.start():close_p].count('\n')))
        edits.append((b + 1, b + 1, f' ::emu::check_launch_bounds(long({first}), "{k.group(1)}", __FILE__, __LINE__);'))
        bounds += 1

    if errors:
        sys.stderr.write('\n'.join('rewrite.py: ' + e for e in errors) + '\n')
        sys.exit(1)
    out = src
    for s, e, rep in sorted(edits, key=lambda x: (x[0], x[1]), reverse=True):
        out = out[:s] + rep + out[e:]
    left = strip_comments(out)
    for bad in ('<<<', '>>>', '__shared__'):
        if bad in left:
            sys.stderr.write(f'rewrite.py: {name}: "{bad}" is still in the rewritten source\n')
            sys.exit(1)
    if out.count('\n') != src.count('\n'):
        sys.stderr.write(f'rewrite.py: {name}: the rewrite changed the line count\n')
        sys.exit(1)
    with open(a.out, 'w') as f:
        f.write(f'#line 1 "{name}"\n' + out)
    print(f'rewrite.py: {name}: {launches} launches, {dyn} dynamic and {static} static shared declarations, '
          f'{bounds} launch bounds')


if __name__ == '__main__':
    main()
