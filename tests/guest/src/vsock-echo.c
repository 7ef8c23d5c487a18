/*
 * vsock-echo: the Linux kit's AF_VSOCK echo server (busybox has no vsock).
 *
 *   vsock-echo [PORT [COUNT [READY_FILE]]]
 *
 * Prints "vsock-echo: local cid N" (the guest_cid the device's
 * configuration gave the guest, from /dev/vsock), listens on
 * VMADDR_CID_ANY:PORT (default 1024, the port kata-agent listens on),
 * prints "vsock-echo: listening on port PORT" and creates
 * READY_FILE (if given: the host waits for it in a share) once it
 * listens, then serves one connection after the other, writing back every
 * byte it reads until the peer closes; exits 0 after COUNT connections
 * (default 0: never). Built static by scripts/build-linux-kit.sh
 * (gcc -static) into the kit's initramfs as /bin/vsock-echo.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void echo(int conn)
{
    char buf[4096];
    for (;;) {
        ssize_t n = read(conn, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || write_all(conn, buf, (size_t)n) < 0)
            return;
    }
}

int main(int argc, char **argv)
{
    unsigned long port = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
    unsigned long count = argc > 2 ? strtoul(argv[2], NULL, 10) : 0;
    unsigned long served = 0;
    struct sockaddr_vm addr;
    unsigned int cid = 0;
    int dev = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
    if (dev < 0 || ioctl(dev, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) < 0) {
        fprintf(stderr, "vsock-echo: /dev/vsock: %s\n", strerror(errno));
        return 1;
    }
    close(dev);
    printf("vsock-echo: local cid %u\n", cid);
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) {
        fprintf(stderr, "vsock-echo: socket(AF_VSOCK): %s\n", strerror(errno));
        return 1;
    }
    memset(&addr, 0, sizeof(addr));
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = VMADDR_CID_ANY;
    addr.svm_port = (unsigned int)port;
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 4) < 0) {
        fprintf(stderr, "vsock-echo: bind/listen on port %lu: %s\n", port, strerror(errno));
        return 1;
    }
    printf("vsock-echo: listening on port %lu\n", port);
    fflush(stdout);
    if (argc > 3) {
        int ready = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (ready < 0) {
            fprintf(stderr, "vsock-echo: %s: %s\n", argv[3], strerror(errno));
            return 1;
        }
        close(ready);
    }
    while (count == 0 || served < count) {
        int conn = accept(fd, NULL, NULL);
        if (conn < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "vsock-echo: accept: %s\n", strerror(errno));
            return 1;
        }
        echo(conn);
        close(conn);
        served++;
    }
    return 0;
}
