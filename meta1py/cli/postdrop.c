/*
 * meta1-postdrop: put one message into meta1py's pickup directory (Postfix's postdrop).
 *
 * Usage: meta1-postdrop /QUEUE_DIRECTORY/pickup < PICKUP_FILE
 *
 * "meta1 setup --sendmail" compiles this file and installs the program as root:SETGID_GROUP,
 * mode 2755: setgid to the submission group (meta1d by default), never setuid. "meta1 sendmail"
 * runs it when the MTA cannot take a message and the user may not write the pickup directory
 * itself. It reads one pickup file (the format is in meta1py/queue/pickup.py) on standard input,
 * writes it into the directory named by its only argument, and prints the file's name.
 *
 * What the group lends it, and nothing more: it may create files in directories whose group is
 * the submission group and which grant that group write permission. By the ownership model
 * (meta1py/ownership.py) those are pickup directories only: owner meta1q, mode 1730 (the group
 * may create files and open them by name, not list the directory; the sticky bit lets it remove
 * only files its user owns). The program refuses any directory that is not like that, never
 * opens a file it did not create, never lists a directory, reads no environment variable and
 * loads nothing. It checks only the first line and a size cap: qmgr reads every pickup file as
 * hostile input. The file belongs to the real uid, which qmgr writes into the Received: header;
 * nobody can forge it.
 *
 * The order of writing: a temporary name (O_EXCL), the data, mode 0644 (qmgr reads it as
 * "others"; nobody else can search the directory), link() to the final name (never replacing a
 * file), fsync() of the file, which on a journaling file system (ext4, XFS) commits the
 * transaction that holds the new name too, then the temporary name goes. The group cannot read
 * the directory, so it cannot fsync it; see docs/internals.md ("Offline submission").
 *
 * Exit statuses (sysexits.h): 0 written; 64 usage; 65 the input is not a pickup file or is too
 * large; 71 system error; 73 not a pickup directory; 75 the file could not be written (full
 * disk, I/O error: try again later).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef MAX_FILE_BYTES
#define MAX_FILE_BYTES (64L * 1024 * 1024)
#endif
#ifndef POSTDROP_ID
#define POSTDROP_ID "unversioned"
#endif

#define EX_USAGE 64
#define EX_DATAERR 65
#define EX_OSERR 71
#define EX_CANTCREAT 73
#define EX_TEMPFAIL 75

/* "meta1 setup" finds this string in the installed program to tell whether it is up to date. */
const char postdrop_id[] = "meta1-postdrop-id " POSTDROP_ID;

static const char magic[] = "meta1-pickup 1\n";
static int dir_fd = -1;
static char final_name[33];
static char temp_name[40];
static int temp_made = 0;

static void fail(int status, const char *what, int err)
{
    if (temp_made)
        unlinkat(dir_fd, temp_name, 0);
    if (err)
        fprintf(stderr, "meta1-postdrop: %s: %s\n", what, strerror(err));
    else
        fprintf(stderr, "meta1-postdrop: %s\n", what);
    exit(status);
}

static void new_names(void)
{
    unsigned char bytes[16];
    size_t got = 0;

    while (got < sizeof bytes) {
        ssize_t n = getrandom(bytes + got, sizeof bytes - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail(EX_OSERR, "getrandom", errno);
        }
        got += (size_t) n;
    }
    for (size_t i = 0; i < sizeof bytes; i++)
        snprintf(final_name + 2 * i, 3, "%02x", bytes[i]);
    snprintf(temp_name, sizeof temp_name, ".tmp-%s", final_name);
}

static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail(EX_TEMPFAIL, "cannot write the pickup file", errno);
        }
        buf += n;
        len -= (size_t) n;
    }
}

int main(int argc, char **argv)
{
    struct stat st;
    char buf[65536];
    long long total = 0;
    size_t magic_seen = 0;
    int fd = -1;

    /* Descriptors 0-2 must be open, or a file opened below could become standard error. */
    for (int i = 0; i <= 2; i++)
        if (fcntl(i, F_GETFD) < 0 && open("/dev/null", O_RDWR) != i)
            return EX_OSERR;
    if (argc != 2 || argv[1][0] != '/') {
        fprintf(stderr, "usage: meta1-postdrop /QUEUE_DIRECTORY/pickup < PICKUP_FILE\n");
        return EX_USAGE;
    }
    umask(077);
    /* O_PATH: searching the path is enough; the group has no read permission on the directory. */
    dir_fd = open(argv[1], O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0)
        fail(errno == ENOENT ? EX_CANTCREAT : EX_TEMPFAIL, argv[1], errno);
    if (fstat(dir_fd, &st) < 0)
        fail(EX_OSERR, argv[1], errno);
    if (!S_ISDIR(st.st_mode) || st.st_gid != getegid() || (st.st_mode & 07777) != 01730)
        fail(EX_CANTCREAT, "not a pickup directory (this program's group, mode 1730), or "
                           "this program is not setgid to its group",
             0);

    for (int attempt = 0; fd < 0; attempt++) {
        new_names();
        fd = openat(dir_fd, temp_name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 && (errno != EEXIST || attempt > 10))
            fail(errno == EACCES ? EX_CANTCREAT : EX_TEMPFAIL, "cannot create a pickup file", errno);
    }
    temp_made = 1;

    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail(EX_TEMPFAIL, "cannot read standard input", errno);
        }
        if (n == 0)
            break;
        total += n;
        if (total > MAX_FILE_BYTES)
            fail(EX_DATAERR, "the message is larger than the limit", 0);
        for (ssize_t i = 0; i < n && magic_seen < sizeof magic - 1; i++, magic_seen++)
            if (buf[i] != magic[magic_seen])
                fail(EX_DATAERR, "standard input is not a pickup file", 0);
        write_all(fd, buf, (size_t) n);
    }
    if (magic_seen < sizeof magic - 1)
        fail(EX_DATAERR, "standard input is not a pickup file", 0);
    if (fchmod(fd, 0644) < 0)
        fail(EX_TEMPFAIL, "cannot set the pickup file's mode", errno);
    while (linkat(dir_fd, temp_name, dir_fd, final_name, 0) < 0) {
        if (errno != EEXIST)
            fail(EX_TEMPFAIL, "cannot name the pickup file", errno);
        /* Another file has this name (2^-128): draw another final name, same temporary one. */
        char old_temp[sizeof temp_name];
        memcpy(old_temp, temp_name, sizeof temp_name);
        new_names();
        memcpy(temp_name, old_temp, sizeof temp_name);
    }
    if (fsync(fd) < 0) {
        int err = errno;
        unlinkat(dir_fd, final_name, 0);
        fail(EX_TEMPFAIL, "cannot sync the pickup file", err);
    }
    close(fd);
    unlinkat(dir_fd, temp_name, 0);
    temp_made = 0;
    printf("%s\n", final_name);
    return fflush(stdout) == 0 ? 0 : EX_OSERR;
}
