# The test guest's boot code: the PVH note, the 32-bit PVH entry, the AP
# real-mode trampoline, and the switch to long mode both CPUs share.
# No SSE, no XSAVE, no INT3: KVM here is an instruction emulator.

# XEN_ELFNOTE_PHYS32_ENTRY (18): the 32-bit physical entry point of PVH.
.section .note.Xen, "a"
.p2align 2
.long 4
.long 4
.long 18
.asciz "Xen"
.p2align 2
.long pvh_start

# ---------------------------------------------------------------- BSP entry
# PVH: 32-bit protected mode, paging off, flat CS/DS, EBX = hvm_start_info.
.section .text.pvh, "ax"
.code32
.global pvh_start
pvh_start:
    cli
    mov al, 0x01
    out 0x80, al                # "the guest wrote to a port at entry"
    mov edi, ebx                # start_info, the first argument of bsp_main
    mov esp, offset bsp_stack_top

    # PML4[0] -> PDPT; PDPT[0..4] -> PD[0..4]; 2048 2 MiB pages = 4 GiB identity.
    mov eax, offset pdpt
    or eax, 3
    mov [pml4], eax
    xor ecx, ecx
1:  mov eax, ecx
    shl eax, 12
    add eax, offset pd
    or eax, 3
    mov [pdpt + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jne 1b
    xor ecx, ecx
2:  mov eax, ecx
    shl eax, 21
    or eax, 0x83                # present, writable, 2 MiB page
    mov [pd + ecx * 8], eax
    inc ecx
    cmp ecx, 2048
    jne 2b

    xor esi, esi                # 0: the BSP
    jmp long_mode

# AP, after the trampoline: 32-bit protected mode, flat segments.
ap_prot32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esi, 1                  # 1: an AP

# Page tables are built; CR4.PAE, CR3, EFER.LME, CR0.PG, then a far jump.
long_mode:
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, offset pml4
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    or eax, 0x80000001
    mov cr0, eax
    lgdt [gdt64_ptr]
    .byte 0xea                  # ljmp 0x08:entry64
    .long entry64
    .word 0x08

.code64
entry64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    test esi, esi
    jnz 3f
    lea rsp, [rip + bsp_stack_top]
    mov edi, edi
    call bsp_main
    jmp 4f
3:  mov rsp, [rip + AP_STACK_TOP]
    call ap_main
4:  cli
    hlt
    jmp 4b

.section .rodata.gdt64, "a"
.p2align 3
gdt64:
    .quad 0
    .quad 0x00af9a000000ffff    # 0x08: 64-bit code
    .quad 0x00cf92000000ffff    # 0x10: data
gdt64_ptr:
    .word gdt64_ptr - gdt64 - 1
    .quad gdt64

# ---------------------------------------------------------------- AP trampoline
# Linked at 0x10000: a SIPI with vector 0x10 starts an AP here in real mode,
# CS = 0x1000, IP = 0.
.section .trampoline, "ax"
.code16
.global ap_trampoline
ap_trampoline:
    cli
    mov ax, cs
    mov ds, ax
    lgdt [gdt32_ptr - 0x10000]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xea            # ljmp 0x08:ap_prot32 (32-bit offset)
    .long ap_prot32
    .word 0x08

.p2align 3
gdt32:
    .quad 0
    .quad 0x00cf9a000000ffff    # 0x08: 32-bit code
    .quad 0x00cf92000000ffff    # 0x10: data
gdt32_ptr:
    .word gdt32_ptr - gdt32 - 1
    .long gdt32

# ---------------------------------------------------------------- page tables, stacks
.section .bss.boot, "aw", @nobits
.p2align 12
pml4: .skip 4096
.global pdpt
pdpt: .skip 4096
pd:   .skip 4096 * 4
.p2align 4
    .skip 16384
bsp_stack_top:
